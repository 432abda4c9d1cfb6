-- Items of every basket (a revenue order as known on the as-of date), once at product level
-- (item = sku) and once at category level (item = category): the input of association mining.
-- Only valid lines count: a line with a quantity or price that is not positive is not a purchase.
{%- set as_of_date = "cast('" ~ var('as_of_date') ~ "' as date)" %}

with orders as (
    select * from {{ ref('orders_as_known') }}
),

order_lines as (
    select * from {{ ref('fct_order_lines') }}
),

products as (
    select * from {{ ref('dim_products') }}
),

basket_lines as (
    select
        orders.order_id,
        orders.customer_id,
        orders.order_date,
        order_lines.sku,
        products.category,
        order_lines.quantity,
        order_lines.net_amount
    from orders
    inner join order_lines
        on orders.order_id = order_lines.order_id
    inner join products
        on order_lines.sku = products.sku
    where orders.as_of_date = {{ as_of_date }}
        and orders.is_revenue
        and order_lines.is_valid
),

items as (
    select 'product' as item_level, order_id, customer_id, order_date, sku as item, quantity, net_amount
    from basket_lines
    union all
    select 'category', order_id, customer_id, order_date, category, quantity, net_amount
    from basket_lines
),

final as (
    select
        order_id as basket_id,
        cast(item_level as {{ dbt.type_string() }}) as item_level,
        cast(item as {{ dbt.type_string() }}) as item,
        customer_id,
        order_date,
        {{ as_of_date }} as as_of_date,
        cast(sum(quantity) as integer) as quantity,
        cast(sum(net_amount) as numeric(18, 2)) as net_amount
    from items
    group by order_id, item_level, item, customer_id, order_date
)

select * from final
