{#- Post-hook of every model: on PostgreSQL, an index on `_built_at` of each incremental model.
    A day reads a big incremental table by `_built_at` many times: its own build asks for the
    newest (`max(_built_at)`, macros/incremental_aggregates.sql and others), and each row-by-row
    test of it reads the rows the run wrote (`_built_at` = the newest, macros/test_scope.sql). With
    no index each of those is a sequential scan of the whole table, two per test: at 10,000
    customers the seven tests of training_set took 5.1 s of a steady day (0.7 s each), and they
    grow with the history. With it, the newest is one index lookup and a test reads its rows only.
    Kept by the table across incremental runs; a table that lacks one (a full refresh swaps in a
    new table, or an older version built it) gets it here, under a name PostgreSQL picks: the
    swapped-out table still holds the old index's name until dbt drops it. DuckDB keeps each row
    group's minimum and maximum, which serve the same reads: nothing to do there. -#}
{% macro index_written_rows() -%}
    {%- if target.type == 'postgres' and execute and config.get('materialized') == 'incremental' -%}
        {%- set lacking_index -%}
            select 1
            from pg_attribute as built_at
            where built_at.attrelid = cast('{{ this.include(database=false) }}' as regclass)
                and built_at.attname = '_built_at'
                and not exists (
                    select 1 from pg_index
                    where indrelid = built_at.attrelid and indnkeyatts = 1 and indkey[0] = built_at.attnum
                )
        {%- endset -%}
        {%- if run_query(lacking_index) | length > 0 %}
    create index on {{ this }} (_built_at)
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
