with source as not materialized (
    select * from {{ source('raw_sales', 'payments') }}
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
    latest._loaded_at
from latest
left join orders
    on latest.order_id = orders.order_id
where not latest._is_deleted
