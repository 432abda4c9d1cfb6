{#- Incremental staging: a staging table keeps the latest version of each record, and a day loads
    versions of a few records. Rebuilt whole, order lines cost 3-5 s of a steady day at 100,000
    customers (11M rows ranked again), and the cost grows with the history. Incremental, a run
    ranks again only the versions of the records with a version loaded since the table's last
    build (`_built_at`), plus the records `also_changed` names (a query of key columns: those whose
    flags hang on another table's change), and replaces them by key (delete+insert). A record whose
    latest version is now a tombstone writes no row: the post-hook below drops its old one. An
    empty table, or one built before `_built_at` existed, counts as holding nothing
    (`changed_since_this_was_built`). -#}

{#- The versions in `versions_relation` of the records a run redoes (all of them on a full build).
    The model passes its own is_incremental(): dbt's unit tests answer that call in a model only. -#}
{% macro versions_to_stage(versions_relation, key_columns, incremental, also_changed=none) -%}
    select versions.*
    from {{ versions_relation }} as versions
    {%- if incremental %}
    where exists (
        select 1
        from (
            select {{ key_columns | join(', ') }}
            from {{ versions_relation }}
            where {{ changed_since_this_was_built('_loaded_at') }}
            {%- if also_changed %}
            union all
            {{ also_changed }}
            {%- endif %}
        ) as changed
        where {% for key in key_columns %}changed.{{ key }} = versions.{{ key }}{% if not loop.last %} and {% endif %}{% endfor %}
    )
    {%- endif %}
{%- endmacro %}

{#- Post-hook: drop the rows of records gone from the source since they were written, of the rows
    this run left alone. A record deleted in the source gets a tombstone version: gone when a
    version of it was loaded after the previous build (any other version made this run rewrite its
    row; every row left alone was built by then, so that bound is exact). A raw table reloaded from
    scratch (the DAG's full_refresh param) holds no version from before the previous build: every
    record it still has was redone, so every row left alone is gone. A table of records of several
    sources (identity) names its key columns (`this_keys`, text: the versions' keys are cast to
    match) and the rows of the source (`rows_of`, a condition). One uncorrelated `in`, which both
    engines run as a semi-join: correlated with each row (the cast keeps PostgreSQL off the raw
    key's index) PostgreSQL scanned the raw versions once per identity row, over ten minutes on one
    steady day at 10,000 customers; beside an OR it cannot join, and it scanned the recent keys
    once per row (36 s for the order lines at 10,000 customers). -#}
{% macro delete_staged_rows_of_deleted_records(versions_relation, key_columns, this_keys=none, rows_of=none) -%}
    {%- if is_incremental() %}
    delete from {{ this }}
    where coalesce(_built_at, cast('1900-01-01' as {{ dbt.type_timestamp() }})) < {{ built_at() }}
        {%- if rows_of %}
        and {{ rows_of }}
        {%- endif %}
        and ({{ (this_keys or key_columns) | join(', ') }}) in (
            {{ keys_loaded_since_previous_build(versions_relation, key_columns, this_keys) }}
        )
    {%- endif %}
{%- endmacro %}


{#- `also_changed` of a staging table whose rows carry an order_id flagged by the order's presence
    (lines, payments): the keys of its rows whose order has a version loaded since it was built (an
    order arriving or deleted). The model names `ref('stg_sales__order_versions')` in a
    depends_on comment: this runs on incremental builds only. -#}
{% macro staged_keys_of_orders_loaded_since(key_columns) -%}
            select {% for key in key_columns %}staged.{{ key }}{% if not loop.last %}, {% endif %}{% endfor %}
            from {{ this }} as staged
            inner join {{ ref('stg_sales__order_versions') }} as order_versions
                on staged.order_id = order_versions.order_id
            where {{ changed_since_this_was_built('order_versions._loaded_at') }}
{%- endmacro %}

{#- The keys (`this_keys` of this table, or `key_columns`) of the records in `versions_relation`
    with a version loaded after this table's previous build (its newest `_built_at` before this
    run's), or of every row when none was loaded before it (raw reloaded from scratch). For an
    uncorrelated `in` (see delete_staged_rows_of_deleted_records); the facts'
    delete_rows_missing_from reads it too. With `this_keys` (text) the versions' keys are cast to
    match. Which of the two is asked as the SQL renders: as a union of both, PostgreSQL sized the
    keys by the reload's branch (every row of the table) and read the whole table to delete a
    day's few (0.4-0.8 s for the order lines' staging at 10,000 customers, with an index on its key). -#}
{% macro keys_loaded_since_previous_build(versions_relation, key_columns, this_keys=none) -%}
    {%- set previous_build = newest_built_at(this, before_this_run=true) %}
    {%- set reloaded = execute and not run_query(
        'select 1 from ' ~ versions_relation ~ ' where _loaded_at <= ' ~ previous_build ~ ' limit 1').rows %}
    {%- if reloaded %}
            select {{ (this_keys or key_columns) | join(', ') }}
            from {{ this }}
    {%- else %}
            select
                {%- for key in key_columns %}
                {% if this_keys %}cast({{ key }} as {{ dbt.type_string() }}){% else %}{{ key }}{% endif %}{% if not loop.last %},{% endif %}
                {%- endfor %}
            from {{ versions_relation }}
            where _loaded_at > {{ previous_build }}
    {%- endif %}
{%- endmacro %}
