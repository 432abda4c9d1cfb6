-- Each customer's revenue spend by product category on the run's as-of date: the net amount of
-- their valid lines of revenue orders as known then, and each category's share of it. Summed from
-- basket_items' rows (each product with its category), which hold exactly those lines, so the two
-- never disagree.
{%- set as_of_date = as_of_date_sql() %}

with basket_items as {{ cte_not_materialized() }} (
    select * from {{ ref('basket_items') }}
),

category_spend as (
    select
        customer_id,
        category,
        sum(net_amount) as net_amount
    from basket_items
    group by customer_id, category
),

final as (
    select
        customer_id,
        {{ as_of_date }} as as_of_date,
        cast(category as {{ dbt.type_string() }}) as category,
        cast(net_amount as numeric(18, 2)) as net_amount,
        cast(case when sum(net_amount) over (partition by customer_id) > 0
            then {{ decimal_ratio('net_amount', 'sum(net_amount) over (partition by customer_id)') }}
        end as {{ type_double() }}) as spend_share
    from category_spend
)

select * from final
