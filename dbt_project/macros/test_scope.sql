{#- Which rows a generic test reads. dbt's own version applies the test's `where` config; this one
    also narrows a row-by-row test (unique, not_null, accepted_values, relationships,
    expression_is_true) of an incremental model to the rows its latest run wrote (`_built_at`) when
    var('test_scope') is 'written', the default: a steady day then tests its own rows, not two
    years. A key cannot be duplicated across runs (each run replaces its keys), and the DAG runs a
    whole-table pass weekly with test_scope 'all'. A full refresh writes every row, so tests all. -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- set written_only = var('test_scope', 'written') == 'written' and _tests_rows_of_incremental_model() -%}
    {%- if where or written_only -%}
        {%- set conditions = [where] if where else [] -%}
        {%- if written_only -%}
            {%- do conditions.append('_built_at = (select max(_built_at) from ' ~ relation ~ ')') -%}
        {%- endif -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ conditions | join(' and ') ~ ') dbt_subquery') -%}
    {%- endif -%}
    {%- do return(relation) -%}
{%- endmacro %}

{% macro _tests_rows_of_incremental_model() -%}
    {%- set row_tests = ['unique', 'not_null', 'accepted_values', 'relationships', 'expression_is_true'] -%}
    {%- set tested = graph.nodes.get(model.attached_node) if execute and model.attached_node else none -%}
    {%- do return(
        tested is not none
        and model.test_metadata.name in row_tests
        and tested.config.materialized == 'incremental'
        and '_built_at' in tested.columns
    ) -%}
{%- endmacro %}
