-- Products of every basket (a revenue order as known on the as-of date): the input of association
-- mining. Only valid lines count: a line with a quantity or price that is not positive is not a
-- purchase. Each row carries its product's category, so products can be ranked within a category
-- without another join, and the category level (a basket's distinct categories) is read from the
-- same rows instead of stored again (ml_tasks/association.py).
--
-- Incremental: a run rewrites the baskets changed_baskets names (an order or line rewritten or
-- loaded, a product loaded, an order known on only one of the last build's and this run's as-of
-- dates) and drops those of them that are no longer baskets (post-hook); the rest stay as built.
-- depends_on: {{ ref('changed_baskets') }}
{%- set as_of_date = as_of_date_sql() %}

with orders as {{ cte_not_materialized() }} (
    select * from {{ ref('orders_as_known') }}
),

order_lines as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_order_lines') }}
),

products as {{ cte_not_materialized() }} (
    select * from {{ ref('dim_products') }}
),

baskets as (
    select order_id, customer_id, order_date
    from orders
    where {{ is_known_on(as_of_date, 'orders') }}
        and is_revenue
        {%- if builds_on_this() %}
        and order_id in (select basket_id from {{ ref('changed_baskets') }})
        {%- endif %}
),

basket_lines as (
    select
        baskets.order_id,
        order_lines.sku,
        products.category,
        order_lines.quantity,
        order_lines.net_amount
    from baskets
    inner join order_lines
        on baskets.order_id = order_lines.order_id
    inner join products
        on order_lines.sku = products.sku
    where order_lines.is_valid
),

-- Grouped by basket and product alone, the basket's customer and date joined after: a narrower
-- grouping key (at a million customers the wider one ran DuckDB out of memory). A product has one
-- category, so min() only carries it through without widening the key.
basket_items as (
    select
        order_id,
        sku,
        min(category) as category,
        sum(quantity) as quantity,
        sum(net_amount) as net_amount
    from basket_lines
    group by order_id, sku
),

final as (
    select
        basket_items.order_id as basket_id,
        cast(basket_items.sku as {{ dbt.type_string() }}) as sku,
        cast(basket_items.category as {{ dbt.type_string() }}) as category,
        baskets.customer_id,
        baskets.order_date,
        cast(basket_items.quantity as integer) as quantity,
        cast(basket_items.net_amount as numeric(18, 2)) as net_amount,
        {{ built_at() }} as _built_at,
        {{ as_of_date }} as _built_as_of
    from basket_items
    inner join baskets
        on basket_items.order_id = baskets.order_id
)

select * from final
