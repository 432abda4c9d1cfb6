with orders as (
    select * from {{ ref('stg_sales__orders') }}
),

order_lines as (
    select * from {{ ref('stg_sales__order_lines') }}
),

line_totals as (
    select
        order_id,
        count(*) as line_count,
        sum(quantity) as item_count,
        sum(quantity * unit_price) as gross_amount,
        sum(discount_amount) as discount_amount
    from order_lines
    group by order_id
),

final as (
    select
        orders.order_id,
        orders.customer_email,
        orders.crm_id,
        orders.channel,
        orders.store_id,
        orders.order_status,
        orders.ordered_at,
        cast(orders.ordered_at as date) as order_date,
        cast(coalesce(line_totals.line_count, 0) as integer) as line_count,
        cast(coalesce(line_totals.item_count, 0) as integer) as item_count,
        cast(coalesce(line_totals.gross_amount, 0) as numeric(18, 2)) as gross_amount,
        cast(coalesce(line_totals.discount_amount, 0) as numeric(18, 2)) as discount_amount,
        cast(coalesce(line_totals.gross_amount, 0) - coalesce(line_totals.discount_amount, 0) as numeric(18, 2))
            as net_amount,
        orders.order_status not in ('cancelled', 'returned') as is_revenue
    from orders
    left join line_totals
        on orders.order_id = line_totals.order_id
)

select * from final
