{#- Which rows a generic test reads. dbt's own version applies the test's `where` config; this one
    also narrows a row-by-row test (unique, not_null, accepted_values, relationships,
    expression_is_true, and unique_key on columns holding the model's own key) of an incremental model to the rows
    its latest run wrote (`_built_at`) when var('test_scope') is 'written', the default: a steady
    day then tests its own rows, not two years. A key cannot be duplicated across runs (each run
    replaces its keys), and the DAG runs a whole-table pass weekly with test_scope 'all'. A full
    refresh writes every row, so tests all. -#}
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
    {#- Every incremental model stamps the rows a run writes with `_built_at` (the incremental
        equality test checks it), documented or not (customer_feature_snapshots shares its
        columns' docs with customer_features). A key test (unique_key) reads the written rows only
        when its columns hold the model's own unique_key: delete+insert replaced every stored row
        of a key the run wrote, and two rows alike on the test's columns share the model's key, so
        a duplicate can only be among the written rows. -#}
    {%- set row_tests = ['unique', 'not_null', 'accepted_values', 'relationships', 'expression_is_true'] -%}
    {%- set tested = graph.nodes.get(model.attached_node) if execute and model.attached_node else none -%}
    {%- if tested is none or tested.config.materialized != 'incremental' -%}
        {%- do return(false) -%}
    {%- endif -%}
    {%- set test_name = model.test_metadata.name -%}
    {%- if test_name == 'unique_key' -%}
        {%- set model_key = tested.config.unique_key -%}
        {%- set model_key = [model_key] if model_key is string else model_key -%}
        {%- set reads_written = model_key | reject('in', model.test_metadata.kwargs.columns) | list | length == 0 -%}
    {%- else -%}
        {%- set reads_written = test_name in row_tests -%}
    {%- endif -%}
    {%- do return(reads_written) -%}
{%- endmacro %}
