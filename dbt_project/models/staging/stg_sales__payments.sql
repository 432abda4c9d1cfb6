-- Incremental: redoes the payments with a version loaded since its last build, and those of orders
-- with one (an order arriving or deleted changes its payments' orphan flag); see
-- macros/incremental_staging.sql.
{{ config(
    materialized='incremental',
    unique_key='payment_id',
    post_hook=["{{ delete_staged_rows_of_deleted_records(source('raw_sales', 'payments'), ['payment_id']) }}"],
) }}

-- depends_on: {{ ref('stg_sales__order_versions') }}

with source as {{ cte_not_materialized() }} (
    {{ versions_to_stage(source('raw_sales', 'payments'), ['payment_id'], is_incremental(),
        staged_keys_of_orders_loaded_since(['payment_id']) if is_incremental() else none) }}
),

orders as (
    select order_id from {{ ref('stg_sales__orders') }}
),

renamed as (
    select
        cast(payment_id as {{ dbt.type_string() }}) as payment_id,
        cast(order_id as bigint) as order_id,
        lower(method) as payment_method,
        cast(amount as numeric(18, 4)) as amount,
        cast(paid_at as {{ dbt.type_timestamp() }}) as paid_at,
        coalesce(_deleted, false) as _is_deleted,
        _delivery_date,
        _loaded_at
    from source
),

latest as (
    {{ latest_version('renamed', ['payment_id'], ['paid_at desc']) }}
)

-- A record hard-deleted in the source has a tombstone as its latest raw version: left out.
select
    latest.payment_id,
    latest.order_id,
    latest.payment_method,
    latest.amount,
    latest.amount < 0 as is_refund,
    latest.paid_at,
    {{ quality_flags({
        'zero_amount': 'latest.amount = 0',
        'orphan_payment': 'orders.order_id is null',
        'implausible_paid_at': 'not ' ~ is_plausible_date('latest.paid_at'),
    }) }},
    latest._delivery_date,
    latest._loaded_at,
    {{ built_at() }} as _built_at
from latest
left join orders
    on latest.order_id = orders.order_id
where not latest._is_deleted
