{#- Incremental models on Spark, first step: rebuilt whole on every run. Plain Parquet tables, the
    only table format a local Spark has without extra jars, take neither delete+insert nor merge
    nor DELETE, which the incremental models and their post-hooks use. So on Spark
    `is_incremental()` is always false (every model renders its full-build SQL, every post-hook
    that deletes renders nothing), and the incremental materialization is the table one (drop,
    then create as select). Each run costs a full build, as a --full-refresh does on the other
    engines, and the rows come out the same. The next step, true incremental runs on Spark:
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
