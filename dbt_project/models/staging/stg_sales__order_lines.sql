with versions as not materialized (
    select * from {{ ref('stg_sales__order_line_versions') }}
),

orders as (
    select order_id from {{ ref('stg_sales__orders') }}
),

latest as (
    {{ latest_version('versions', ['order_id', 'line_number'], ['updated_at desc']) }}
)

-- A record hard-deleted in the source has a tombstone as its latest raw version: left out.
-- An orphan line (its order unknown or deleted) is kept and flagged; facts leave it out.
select
    latest.order_id,
    latest.line_number,
    latest.sku,
    latest.quantity,
    latest.unit_price,
    latest.discount_amount,
    latest.updated_at,
    {{ quality_flags({
        'nonpositive_quantity': 'latest.quantity <= 0',
        'nonpositive_price': 'latest.unit_price <= 0',
        'orphan_line': 'orders.order_id is null',
    }) }},
    latest._delivery_date,
    latest._loaded_at
from latest
left join orders
    on latest.order_id = orders.order_id
where not latest._is_deleted
