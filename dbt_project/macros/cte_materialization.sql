{#- Hints on how a CTE is run, written between its name and its query (`name as {{ cte_materialized() }} (`).
    PostgreSQL and DuckDB inline a CTE read once and store one read more often; the hints overrule
    that where measured: `not materialized` keeps a large CTE read by several branches inlined so
    each branch's filter reaches its scan, `materialized` stores a small result many later CTEs
    read (identity's rounds). Spark SQL has no such hint (its parser refuses both), and it plans
    every CTE inline, reusing a shuffle that two branches share: there they render nothing. -#}
{% macro cte_not_materialized() -%}
    {{ return(adapter.dispatch('cte_not_materialized')()) }}
{%- endmacro %}

{% macro default__cte_not_materialized() -%}
    not materialized
{%- endmacro %}

{% macro spark__cte_not_materialized() -%}
{%- endmacro %}

{% macro cte_materialized() -%}
    {{ return(adapter.dispatch('cte_materialized')()) }}
{%- endmacro %}

{% macro default__cte_materialized() -%}
    materialized
{%- endmacro %}

{% macro spark__cte_materialized() -%}
{%- endmacro %}
