with source as not materialized (
    select * from {{ source('raw_sales', 'order_lines') }}
),

orders as (
    select order_id from {{ ref('stg_sales__orders') }}
),

renamed as (
    select
        cast(order_id as bigint) as order_id,
        cast(line_number as bigint) as line_number,
        cast(sku as {{ dbt.type_string() }}) as sku,
        cast(quantity as bigint) as quantity,
        cast(unit_price as numeric(18, 4)) as unit_price,
        cast(discount as numeric(18, 4)) as discount_amount,
        cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
        coalesce(_deleted, false) as _is_deleted,
        _delivery_date,
        _loaded_at
    from source
),

latest as (
    {{ latest_version('renamed', ['order_id', 'line_number'], ['updated_at desc']) }}
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
