{#- Tables and incremental models on Spark. Plain Parquet tables, the only table format a local Spark
    has without extra jars, take neither delete+insert nor merge nor DELETE, which the incremental
    models and their post-hooks use. So on Spark `is_incremental()` is always false (every model
    renders its full-build SQL, every post-hook that deletes renders nothing), and the incremental
    materialization is the table one. Each run costs a full build, as a --full-refresh does on the
    other engines, and the rows come out the same. The next step, true incremental runs on Spark:
    `insert_overwrite` of the partitions by `_delivery_date` a run redoes, or Delta tables where
    their jars are available. -#}
{% macro is_incremental() -%}
    {{ return(adapter.dispatch('is_incremental')()) }}
{%- endmacro %}

{% macro default__is_incremental() -%}
    {{ return(dbt.is_incremental()) }}
{%- endmacro %}

{% macro spark__is_incremental() -%}
    {{ return(false) }}
{%- endmacro %}

{% materialization incremental, adapter='spark' -%}
    {{ return(materialization_table_spark()) }}
{%- endmaterialization %}

{#- dbt-spark's table materialization drops a Parquet table before building it anew, so a model that
    reads its own previous build (identity keeps each customer's key, customer_key_aliases its
    retired keys) found nothing to read on its second run. Built aside first, then put in the old
    one's place: the model reads its previous rows while it builds, and readers meet the old table
    until the swap, never a missing one. -#}
{% materialization table, adapter='spark', supported_languages=['sql'] -%}
    {%- set identifier = model['alias'] -%}
    {%- set old_relation = adapter.get_relation(database=database, schema=schema, identifier=identifier) -%}
    {%- set target_relation = api.Relation.create(identifier=identifier, schema=schema, database=database, type='table') -%}
    {%- set new_relation = api.Relation.create(identifier=identifier ~ '__dbt_new', schema=schema, database=database, type='table') -%}
    {{ adapter.drop_relation(new_relation) }}

    {{ run_hooks(pre_hooks) }}
    {%- call statement('main') -%}
        {{ create_table_as(False, new_relation, compiled_code) }}
    {%- endcall -%}
    {%- if old_relation is not none %}
        {{ adapter.drop_relation(old_relation) }}
    {%- endif %}
    {{ adapter.rename_relation(new_relation, target_relation) }}

    {% do apply_grants(target_relation, config.get('grants'), should_revoke(old_relation, full_refresh_mode=True)) %}
    {% do persist_docs(target_relation, model) %}
    {% do persist_constraints(target_relation, model) %}
    {{ run_hooks(post_hooks) }}
    {{ return({'relations': [target_relation]}) }}
{%- endmaterialization %}
