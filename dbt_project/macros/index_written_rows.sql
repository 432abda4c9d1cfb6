{#- Post-hook of every model: on PostgreSQL, an index on `_built_at` of each incremental model, and
    on `as_of_date` of each incremental feature model (one row per customer and feature date).
    DuckDB keeps each row group's minimum and maximum, which serve the same reads: nothing to do
    there.

    `_built_at`: a day reads a big incremental table by `_built_at` many times: its own build asks
    for the newest (`max(_built_at)`, macros/incremental_aggregates.sql and others), and each
    row-by-row test of it reads the rows the run wrote (`_built_at` = the newest,
    macros/test_scope.sql). With no index each of those is a sequential scan of the whole table,
    two per test: at 10,000 customers the seven tests of training_set took 5.1 s of a steady day
    (0.7 s each), and they grow with the history. With it, the newest is one index lookup and a
    test reads its rows only.

    `as_of_date`: a feature model's run asks which feature dates it holds (each of them looked up,
    macros/incremental_features.sql) and which is the latest (changed_customers), and with no
    index each question scanned the whole table: 0.45 s of customer_feature_snapshots' steady day
    at 10,000 customers, 1 ms with it. The date alone, not the model's unique key (date and
    customer): with the key indexed, PostgreSQL joined training_set's 399,741 snapshots to the
    purchase summary by 399,741 index lookups, slower than one hash join. A few distinct dates
    make a small index (PostgreSQL stores each once per page).

    Kept by the table across incremental runs; a table that lacks one (a full refresh swaps in a
    new table, or an older version built it) gets it here, under a name PostgreSQL picks: the
    swapped-out table still holds the old index's name until dbt drops it. -#}
{% macro index_written_rows() -%}
    {%- if target.type == 'postgres' and execute and config.get('materialized') == 'incremental' -%}
        {%- set unique_key = config.get('unique_key') -%}
        {%- set indexed = ['_built_at'] + (['as_of_date'] if unique_key is not string and 'as_of_date' in (unique_key or []) else []) -%}
        {%- set lacking_indexes -%}
            select attribute.attname
            from pg_attribute as attribute
            where attribute.attrelid = cast('{{ this.include(database=false) }}' as regclass)
                and attribute.attname in ('{{ indexed | join("', '") }}')
                and not exists (
                    select 1 from pg_index
                    where indrelid = attribute.attrelid and indnkeyatts = 1 and indkey[0] = attribute.attnum
                )
        {%- endset -%}
        {%- for row in run_query(lacking_indexes) %}
    create index on {{ this }} ({{ row[0] }});
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
