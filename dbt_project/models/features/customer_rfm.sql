{%- set as_of_date = "cast('" ~ var('as_of_date') ~ "' as date)" -%}

with orders as (
    select * from {{ ref('fct_orders') }}
),

-- Point in time: only orders placed on or before the as-of date count.
known_orders as (
    select *
    from orders
    where is_revenue
        and order_date <= {{ as_of_date }}
),

final as (
    select
        customer_email as customer_key,
        {{ as_of_date }} as as_of_date,
        cast({{ dbt.datediff('max(order_date)', as_of_date, 'day') }} as integer) as recency_days,
        cast(count(*) as integer) as frequency,
        cast(sum(net_amount) as numeric(18, 2)) as monetary,
        min(order_date) as first_order_date,
        max(order_date) as last_order_date
    from known_orders
    group by customer_email
)

select * from final
