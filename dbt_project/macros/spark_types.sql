{#- The marts' contracts declare their columns in PostgreSQL's spelling (varchar, text, double
    precision), which DuckDB reads as well. dbt checks a contract by casting null to each declared
    type on the warehouse; Spark SQL knows these types as string and double (and refuses a varchar
    without a length), so on Spark the check casts to those. One mapping, here, instead of a
    declared type per engine on some 250 columns. -#}
{% macro spark__cast(field, type) -%}
    {%- set spark_types = {'varchar': 'string', 'text': 'string', 'double precision': 'double'} -%}
    cast({{ field }} as {{ spark_types.get(type | trim | lower, type) }})
{%- endmacro %}

{#- A floating-point column in a model's SQL: 8 bytes on every engine (dbt's type_float is 4 bytes
    on DuckDB). -#}
{% macro type_double() -%}
    {{ return(adapter.dispatch('type_double')()) }}
{%- endmacro %}

{% macro default__type_double() -%}
    double precision
{%- endmacro %}

{% macro spark__type_double() -%}
    double
{%- endmacro %}

{#- `numerator` / `denominator` for two decimals (sums of money), as a float's precision allows.
    DuckDB divides decimals as doubles and PostgreSQL to some 16 digits; Spark keeps a decimal
    quotient and, past 38 digits of precision, cuts it to 6 decimal places (0.360716 for
    0.36071610334...): there the numerator becomes a double first. -#}
{% macro decimal_ratio(numerator, denominator) -%}
    {{ return(adapter.dispatch('decimal_ratio')(numerator, denominator)) }}
{%- endmacro %}

{% macro default__decimal_ratio(numerator, denominator) -%}
    {{ numerator }} / {{ denominator }}
{%- endmacro %}

{% macro spark__decimal_ratio(numerator, denominator) -%}
    cast({{ numerator }} as double) / {{ denominator }}
{%- endmacro %}
