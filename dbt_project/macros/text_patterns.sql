{#- True when `expression` contains a match of the regular expression `pattern` (anchor it with ^ and
    $ for a whole match). PostgreSQL's `~`, DuckDB's regexp_matches and Spark's `rlike` (Java's
    regular expressions) agree on the syntax used here. -#}
{% macro matches_pattern(expression, pattern) -%}
    {{ return(adapter.dispatch('matches_pattern')(expression, pattern)) }}
{%- endmacro %}

{% macro default__matches_pattern(expression, pattern) -%}
    ({{ expression }} ~ '{{ pattern }}')
{%- endmacro %}

{% macro duckdb__matches_pattern(expression, pattern) -%}
    regexp_matches({{ expression }}, '{{ pattern }}')
{%- endmacro %}

{% macro spark__matches_pattern(expression, pattern) -%}
    ({{ expression }} rlike '{{ pattern }}')
{%- endmacro %}

{#- Only the digits of `expression`. PostgreSQL and DuckDB replace every match when given flag 'g';
    Spark's regexp_replace always does and takes no flags. -#}
{% macro digits_only(expression) -%}
    {{ return(adapter.dispatch('digits_only')(expression)) }}
{%- endmacro %}

{% macro default__digits_only(expression) -%}
    regexp_replace({{ expression }}, '[^0-9]', '', 'g')
{%- endmacro %}

{% macro spark__digits_only(expression) -%}
    regexp_replace({{ expression }}, '[^0-9]', '')
{%- endmacro %}
