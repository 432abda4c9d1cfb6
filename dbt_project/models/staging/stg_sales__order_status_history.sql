-- Incremental: redoes the status changes with a version loaded since its last build
-- (macros/incremental_staging.sql).
{{ config(
    materialized='incremental',
    unique_key='history_id',
    post_hook=["{{ delete_staged_rows_of_deleted_records(source('raw_sales', 'order_status_history'), ['history_id']) }}"],
) }}

with source as {{ cte_not_materialized() }} (
    {{ versions_to_stage(source('raw_sales', 'order_status_history'), ['history_id'], is_incremental()) }}
),

renamed as (
    select
        cast(history_id as bigint) as history_id,
        cast(order_id as bigint) as order_id,
        lower(status) as order_status,
        cast(changed_at as {{ dbt.type_timestamp() }}) as changed_at,
        coalesce(_deleted, false) as _is_deleted,
        _delivery_date,
        _loaded_at
    from source
),

latest as (
    {{ latest_version('renamed', ['history_id'], ['changed_at desc']) }}
)

-- A record hard-deleted in the source has a tombstone as its latest raw version: left out.
select
    history_id,
    order_id,
    order_status,
    changed_at,
    _delivery_date,
    _loaded_at,
    {{ built_at() }} as _built_at
from latest
where not _is_deleted
