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
