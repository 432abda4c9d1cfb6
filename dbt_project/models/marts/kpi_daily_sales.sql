with orders as (
    select * from {{ ref('fct_orders') }}
),

order_lines as (
    select * from {{ ref('fct_order_lines') }}
),

products as (
    select * from {{ ref('dim_products') }}
),

revenue_orders as (
    select *
    from orders
    where is_revenue
),

-- A customer is new on the day of their first revenue order, returning on every later one.
first_order_dates as (
    select
        customer_id,
        min(order_date) as first_order_date
    from revenue_orders
    group by customer_id
),

category_lines as (
    select
        revenue_orders.order_date,
        revenue_orders.channel,
        products.category,
        revenue_orders.order_id,
        revenue_orders.customer_id,
        revenue_orders.order_date = first_order_dates.first_order_date as is_new_customer,
        order_lines.net_amount
    from order_lines
    inner join revenue_orders
        on order_lines.order_id = revenue_orders.order_id
    inner join products
        on order_lines.sku = products.sku
    inner join first_order_dates
        on revenue_orders.customer_id = first_order_dates.customer_id
    where order_lines.is_valid
),

final as (
    select
        {{ dbt.concat(["cast(order_date as " ~ dbt.type_string() ~ ")", "'|'", 'channel', "'|'", 'category']) }} as kpi_key,
        order_date as sales_date,
        channel,
        category,
        cast(sum(net_amount) as numeric(18, 2)) as revenue,
        cast(count(distinct order_id) as integer) as order_count,
        -- A ratio in double precision: a decimal quotient rounds differently on the two engines.
        cast(sum(net_amount) as double precision) / count(distinct order_id) as average_order_value,
        cast(count(distinct case when is_new_customer then customer_id end) as integer) as new_customers,
        cast(count(distinct case when not is_new_customer then customer_id end) as integer) as returning_customers
    from category_lines
    group by order_date, channel, category
)

select * from final
