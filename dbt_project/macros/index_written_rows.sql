{#- Post-hook of every model: on PostgreSQL, an index on `_built_at` of each incremental model, on
    `as_of_date` of each incremental feature model (one row per customer and feature date), and on
    the unique key of the others but customer_360 (a key of customers, as the feature models').
    DuckDB keeps each row group's minimum and maximum, which serve the same reads: nothing to do
    there.

    `_built_at`: a day reads a big incremental table by `_built_at` many times: its own build asks
    for the newest (`max(_built_at)`, macros/incremental_aggregates.sql and others), and each
    row-by-row test of it reads the rows the run wrote (`_built_at` = the newest,
    macros/test_scope.sql). With no index each of those is a sequential scan of the whole table,
    two per test: at 10,000 customers the seven tests of training_set took 5.1 s of a steady day
    (0.7 s each), and they grow with the history. With it, the newest is one index lookup and a
    test reads its rows only.

    The unique key: each run replaces its rows by key (dbt's delete+insert deletes the keys it is
    about to write), a staging table's post-hook deletes the records gone from the source by key,
    and the next model looks its changed keys up in it. With no index each delete read the whole
    table, however few keys a day wrote: on a steady day at 10,000 customers 14 deletes over 200 ms,
    5.6 s between them (order lines' staging twice, 0.4 s each, for 2,013 lines), growing with the
    history. Not a key of customers: PostgreSQL's estimates of a day's changed customers are its
    weakest (200 estimated, 171,344 true in one plan), and with such a key indexed it looked every
    one of them up instead of hashing (customer_360 6.6 -> 10.0 s, training_set's 399,741
    snapshots one by one: see `as_of_date` below).

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
        {%- set key_columns = [unique_key] if unique_key is string else (unique_key or []) -%}
        {%- set by_customer = 'as_of_date' in key_columns or 'customer_id' in key_columns -%}
        {%- set indexed = ['_built_at'] + (['as_of_date'] if 'as_of_date' in key_columns else []) + ([key_columns | join(', ')] if key_columns and not by_customer else []) -%}
        {%- set lacking_indexes -%}
            select wanted.columns
            from (values ('{{ indexed | join("'), ('") }}')) as wanted (columns)
            where not exists (
                select 1
                from pg_index as index_
                where index_.indrelid = cast('{{ this.include(database=false) }}' as regclass)
                    and array_to_string(array(
                        select attribute.attname
                        from unnest(cast(index_.indkey as int2[])) with ordinality as indexed_column (attnum, position)
                        inner join pg_attribute as attribute
                            on attribute.attrelid = index_.indrelid and attribute.attnum = indexed_column.attnum
                        order by indexed_column.position
                    ), ', ') = wanted.columns
            )
        {%- endset -%}
        {%- for row in run_query(lacking_indexes) %}
    create index on {{ this }} ({{ row[0] }});
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
