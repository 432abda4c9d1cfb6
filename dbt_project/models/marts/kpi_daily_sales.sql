-- depends_on: {{ ref('fct_tickets') }}, {{ ref('stg_service__ticket_versions') }}, {{ ref('stg_crm__customer_versions') }}
with orders as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_orders') }}
),

order_lines as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_order_lines') }}
),

products as {{ cte_not_materialized() }} (
    select * from {{ ref('dim_products') }}
),

order_versions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_sales__order_versions') }}
),

identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

-- Not materialized: read three times with a different filter each, PostgreSQL stored every revenue
-- order to read them all back each time (a steady day at 10,000 customers: 0.6 s to scan 171,000).
revenue_orders as {{ cte_not_materialized() }} (
    select *
    from orders
    where is_revenue
),

{% if is_incremental() -%}
-- A day is redone whole (a day's rows depend on its orders together). Changed since this table was
-- last built: orders the facts rewrote (new, changed, moved to another customer by identity, a line
-- delivered or deleted), and orders with a raw version loaded since, on the day of every version
-- they have, so the day an order left (a hard delete's tombstone copies the last version's day, or
-- a version moving it to another day) loses it.
rewritten_orders as (
    select
        order_id,
        customer_id,
        order_date
    from orders
    where {{ changed_since_this_was_built('_built_at') }}
),

orders_with_new_versions as (
    select order_id
    from order_versions
    where {{ changed_since_this_was_built('_loaded_at') }}
),

-- Every day a changed order stood on, before or after the change, with its customer now.
changed_order_days as (
    select
        customer_id,
        order_date as sales_date
    from rewritten_orders
    union
    select
        orders.customer_id,
        cast(versions.ordered_at as date)
    from order_versions as versions
    inner join orders
        on versions.order_id = orders.order_id
    where versions.order_id in (select order_id from orders_with_new_versions)
),

-- Customers who lost orders they may have had first: to another customer (identity holds the key
-- the record had in its previous build, the one before this run's) or to a hard delete.
customers_losing_orders as (
    select previous_customer_id as customer_id
    from identity
    where previous_customer_id <> customer_id
    union
    select customer_id from ({{ customers_sharing_identifiers_with_deleted_records(changed_since_this_was_built('_loaded_at')) }}) as holders
),

-- A customer is new on their first revenue order's day. Whatever changed, the customer's first day
-- before and after is either a changed order's day (redone anyway) or the earliest day among the
-- orders not rewritten, which is redone too when the change reached it: a changed order on or
-- before it, or an order lost. A change after it (an order placed today, a late return) leaves it
-- first both times, so a busy day does not redo every returning customer's first day.
first_unchanged_days as (
    select
        customer_id,
        min(order_date) as first_unchanged_day
    from revenue_orders
    where customer_id in (
            select customer_id from changed_order_days
            union
            select customer_id from customers_losing_orders
        )
        and not {{ changed_since_this_was_built('_built_at') }}
    group by customer_id
),

moved_first_days as (
    select first_unchanged_days.first_unchanged_day as sales_date
    from first_unchanged_days
    left join (
        select customer_id, min(sales_date) as earliest_changed_day from changed_order_days group by customer_id
    ) as changes
        on first_unchanged_days.customer_id = changes.customer_id
    where changes.earliest_changed_day <= first_unchanged_days.first_unchanged_day
        or first_unchanged_days.customer_id in (select customer_id from customers_losing_orders)
),

days_to_redo as (
    select sales_date from changed_order_days
    union
    -- a deleted order's days: it is gone from fct_orders
    select cast(ordered_at as date)
    from order_versions
    where order_id in (select order_id from orders_with_new_versions)
    union
    select sales_date from moved_first_days
),

{% endif -%}
counted_orders as (
    select *
    from revenue_orders
    {%- if is_incremental() %}
    where order_date in (select sales_date from days_to_redo)
    {%- endif %}
),

-- A customer is new on the day of their first revenue order, returning on every later one.
first_order_dates as (
    select
        customer_id,
        min(order_date) as first_order_date
    from revenue_orders
    {%- if is_incremental() %}
    where customer_id in (select customer_id from counted_orders)
    {%- endif %}
    group by customer_id
),

category_lines as (
    select
        counted_orders.order_date,
        counted_orders.channel,
        products.category,
        counted_orders.order_id,
        counted_orders.customer_id,
        counted_orders.order_date = first_order_dates.first_order_date as is_new_customer,
        order_lines.net_amount
    from order_lines
    inner join counted_orders
        on order_lines.order_id = counted_orders.order_id
    inner join products
        on order_lines.sku = products.sku
    inner join first_order_dates
        on counted_orders.customer_id = first_order_dates.customer_id
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
        cast(sum(net_amount) as {{ type_double() }}) / count(distinct order_id) as average_order_value,
        cast(count(distinct case when is_new_customer then customer_id end) as integer) as new_customers,
        cast(count(distinct case when not is_new_customer then customer_id end) as integer) as returning_customers
    from category_lines
    group by order_date, channel, category
)

select final.*, {{ built_at() }} as _built_at from final
