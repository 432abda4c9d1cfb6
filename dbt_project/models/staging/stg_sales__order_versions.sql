-- Every version of every order header raw holds, typed and cleaned but not deduplicated (a view:
-- raw holds the rows): the latest is stg_sales__orders, and point-in-time features replay the rest.
{{ config(materialized='view') }}

select
    cast(order_id as bigint) as order_id,
    {{ normalize_email('customer_email') }} as customer_email,
    {{ is_valid_email('customer_email') }} as is_email_valid,
    nullif(trim(crm_id), '') as crm_id,
    lower(channel) as channel,
    cast(store_id as {{ dbt.type_string() }}) as store_id,
    lower(status) as order_status,
    cast(created_at as {{ dbt.type_timestamp() }}) as ordered_at,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
    coalesce(_deleted, false) as _is_deleted,
    _delivery_date,
    _loaded_at
from {{ source('raw_sales', 'orders') }}
