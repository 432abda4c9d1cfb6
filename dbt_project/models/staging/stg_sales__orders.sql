with source as (
    select * from {{ source('raw_sales', 'orders') }}
),

renamed as (
    select
        cast(order_id as bigint) as order_id,
        lower(trim(customer_email)) as customer_email,
        cast(crm_id as {{ dbt.type_string() }}) as crm_id,
        lower(channel) as channel,
        cast(store_id as {{ dbt.type_string() }}) as store_id,
        lower(status) as order_status,
        cast(created_at as {{ dbt.type_timestamp() }}) as ordered_at,
        cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
        _loaded_at,
        coalesce(_deleted, false) as is_deleted
    from source
),

latest as (
    select distinct on (order_id) *
    from renamed
    order by order_id, updated_at desc, is_deleted desc, _loaded_at desc
)

-- A record hard-deleted in the source has a tombstone as its latest raw version: left out.
select
    order_id,
    customer_email,
    crm_id,
    channel,
    store_id,
    order_status,
    ordered_at,
    updated_at,
    _loaded_at
from latest
where not is_deleted
