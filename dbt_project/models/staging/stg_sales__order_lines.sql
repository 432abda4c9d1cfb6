-- Incremental: redoes the lines with a version loaded since its last build, and those of orders
-- with one (an order arriving or deleted changes its lines' orphan flag); see
-- macros/incremental_staging.sql.
{{ config(
    materialized='incremental',
    unique_key=['order_id', 'line_number'],
    post_hook=["{{ delete_staged_rows_of_deleted_records(ref('stg_sales__order_line_versions'), ['order_id', 'line_number']) }}"],
) }}

-- depends_on: {{ ref('stg_sales__order_versions') }}

with versions as {{ cte_not_materialized() }} (
    {{ versions_to_stage(ref('stg_sales__order_line_versions'), ['order_id', 'line_number'], is_incremental(),
        staged_keys_of_orders_loaded_since(['order_id', 'line_number']) if is_incremental() else none) }}
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
    latest._loaded_at,
    {{ built_at() }} as _built_at
from latest
left join orders
    on latest.order_id = orders.order_id
where not latest._is_deleted
