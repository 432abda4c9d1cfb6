{#- dbt's dateadd on Spark. dbt-spark's own goes through Unix seconds and to_timestamp of a number,
    which Spark 4 answers with null, and it raises on a null date where DuckDB and PostgreSQL
    return null (a ticket never answered has no reply time to add to). Spark's timestampadd does
    the same as their `+ interval`: a timestamp, null from null, a month's end kept in range. -#}
{% macro spark__dateadd(datepart, interval, from_date_or_timestamp) -%}
    timestampadd({{ datepart }}, cast({{ interval }} as bigint), {{ from_date_or_timestamp }})
{%- endmacro %}
