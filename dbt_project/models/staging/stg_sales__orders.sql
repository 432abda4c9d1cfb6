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
        _loaded_at
    from source
),

latest as (
    select distinct on (order_id) *
    from renamed
    order by order_id, updated_at desc, _loaded_at desc
)

select * from latest
