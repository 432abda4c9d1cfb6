with source as not materialized (
    select * from {{ source('raw_sales', 'order_status_history') }}
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
    _loaded_at
from latest
where not _is_deleted
