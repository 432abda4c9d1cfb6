{#- Two columns flagging a row's invalid values instead of dropping the row:
    `is_valid` (true when no check fails) and `invalid_reason` (the failing checks' names joined
    with ', ' in the given order, null for a valid row).

    checks: a mapping of reason name -> SQL condition that is true when the value is invalid
            (a null condition counts as passing). -#}
{% macro quality_flags(checks) -%}
    {%- set failing = [] -%}
    {%- for reason, condition in checks.items() -%}
        {%- do failing.append("case when " ~ condition ~ " then ', " ~ reason ~ "' else '' end") -%}
    {%- endfor -%}
    {%- set reasons = failing | join(' || ') -%}
    ({{ reasons }}) = '' as is_valid,
    nullif(substr({{ reasons }}, 3), '') as invalid_reason
{%- endmacro %}

{#- True when the date or timestamp `expression` falls within the plausible range (vars
    earliest_plausible_date and latest_plausible_date, inclusive); null when it is null. A date
    outside it is a typo (1025 for 2025, 9999 for "unknown") that no record can carry. -#}
{% macro is_plausible_date(expression) -%}
    (cast({{ expression }} as date) between cast('{{ var("earliest_plausible_date") }}' as date)
        and cast('{{ var("latest_plausible_date") }}' as date))
{%- endmacro %}

{#- Checks for quality_flags: `<column>_too_long` for each of `columns` holding more than
    `max_length` characters (default var max_text_length). The text is kept as delivered: flagged,
    never cut short silently. -#}
{% macro text_length_checks(columns, max_length=none) -%}
    {%- set limit = max_length or var('max_text_length') -%}
    {%- set checks = {} -%}
    {%- for column in columns -%}
        {%- do checks.update({column ~ '_too_long': 'length(' ~ column ~ ') > ' ~ limit}) -%}
    {%- endfor -%}
    {{ return(checks) }}
{%- endmacro %}
