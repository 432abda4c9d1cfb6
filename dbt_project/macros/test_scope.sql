{#- Which rows a generic test reads. dbt's own version applies the test's `where` config; this one
    also narrows a row-by-row test (unique, not_null, accepted_values, relationships,
    expression_is_true, and unique_key on columns holding the model's own key) of an incremental model to the rows
    its latest run wrote (`_built_at`) when var('test_scope') is 'written', the default: a steady
    day then tests its own rows, not two years. A key cannot be duplicated across runs (each run
    replaces its keys), and the DAG runs a whole-table pass weekly with test_scope 'all'. A full
    refresh writes every row, so tests all. A view whose rows are those of an incremental model
    (meta `rows_written_by`: training_set, over training_labels) carries that model's `_built_at`,
    and its tests read the rows that model's latest run wrote. -#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- set writer = _writer_of_tested_rows(relation) if var('test_scope', 'written') == 'written' else none -%}
    {%- if where or writer is not none -%}
        {%- set conditions = [where] if where else [] -%}
        {%- if writer is not none -%}
            {%- do conditions.append('_built_at = ' ~ newest_built_at(writer)) -%}
        {%- endif -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ conditions | join(' and ') ~ ') dbt_subquery') -%}
    {%- endif -%}
    {%- do return(relation) -%}
{%- endmacro %}

{#- The relation whose latest `_built_at` marks the rows the test reads, or none to read them all:
    the tested model itself when _tests_rows_of_incremental_model, the incremental model a view
    names in meta `rows_written_by` for a row-by-row test of that view. -#}
{% macro _writer_of_tested_rows(relation) -%}
    {%- set tested = graph.nodes.get(model.attached_node) if execute and model.attached_node else none -%}
    {%- set writer_name = tested.config.meta.get('rows_written_by') if tested is not none else none -%}
    {%- if writer_name and model.test_metadata.name in _row_by_row_tests() -%}
        {%- set writer = model_node(writer_name) -%}
        {%- do return(api.Relation.create(database=writer.database, schema=writer.schema, identifier=writer.alias)) -%}
    {%- elif _tests_rows_of_incremental_model(tested) -%}
        {%- do return(relation) -%}
    {%- endif -%}
    {%- do return(none) -%}
{%- endmacro %}

{% macro _tests_rows_of_incremental_model(tested) -%}
    {#- Every incremental model stamps the rows a run writes with `_built_at` (the incremental
        equality test checks it), documented or not (customer_feature_snapshots shares its
        columns' docs with customer_features). A key test (unique_key) reads the written rows only
        when its columns hold the model's own unique_key: delete+insert replaced every stored row
        of a key the run wrote, and two rows alike on the test's columns share the model's key, so
        a duplicate can only be among the written rows. `tested`: the tested model's graph node,
        none while parsing. -#}
    {%- if tested is none or tested.config.materialized != 'incremental' -%}
        {%- do return(false) -%}
    {%- endif -%}
    {%- set test_name = model.test_metadata.name -%}
    {%- if test_name == 'unique_key' -%}
        {%- set model_key = tested.config.unique_key -%}
        {%- set model_key = [model_key] if model_key is string else model_key -%}
        {%- set reads_written = model_key | reject('in', model.test_metadata.kwargs.columns) | list | length == 0 -%}
    {%- else -%}
        {%- set reads_written = test_name in _row_by_row_tests() -%}
    {%- endif -%}
    {%- do return(reads_written) -%}
{%- endmacro %}

{% macro _row_by_row_tests() -%}
    {%- do return(['unique', 'not_null', 'accepted_values', 'relationships', 'expression_is_true']) -%}
{%- endmacro %}
