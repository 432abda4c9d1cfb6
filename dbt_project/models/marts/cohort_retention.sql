-- Recomputed whole, written where it moved: a cohort's size and rates depend on every customer's
-- first revenue order, which a late, cancelled, returned or deleted order or an identity merge can
-- move to another month, and a rewritten order's previous state is gone from the fact. The whole
-- recompute is one pass over a few columns of fct_orders for a few hundred rows; only the cells
-- whose figures moved are written (and stamped with _built_at). Cells no longer in the grid (a
-- cohort left empty, months after the latest with orders) go in the post-hook.
with orders as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_orders') }}
),

dates as {{ cte_not_materialized() }} (
    select * from {{ ref('dim_date') }}
),

customer_months as (
    select distinct
        customer_id,
        cast({{ dbt.date_trunc('month', 'order_date') }} as date) as activity_month
    from orders
    where is_revenue
),

-- A customer is acquired in the month of their first revenue order.
cohorts as (
    select
        customer_id,
        min(activity_month) as cohort_month
    from customer_months
    group by customer_id
),

cohort_sizes as (
    select
        cohort_month,
        count(*) as cohort_customers
    from cohorts
    group by cohort_month
),

months as (
    select distinct month_start_date as activity_month
    from dates
    where month_start_date <= (select max(activity_month) from customer_months)
),

activity as (
    select
        cohorts.cohort_month,
        customer_months.activity_month,
        count(distinct customer_months.customer_id) as active_customers
    from customer_months
    inner join cohorts
        on customer_months.customer_id = cohorts.customer_id
    group by cohorts.cohort_month, customer_months.activity_month
),

revenue as (
    select
        cohorts.cohort_month,
        cast({{ dbt.date_trunc('month', 'orders.order_date') }} as date) as activity_month,
        sum(orders.net_amount) as revenue
    from orders
    inner join cohorts
        on orders.customer_id = cohorts.customer_id
    where orders.is_revenue
    group by 1, 2
),

-- Every month from the cohort's first to the latest, a month without a purchase included.
grid as (
    select
        cohort_sizes.cohort_month,
        cohort_sizes.cohort_customers,
        months.activity_month
    from cohort_sizes
    inner join months
        on months.activity_month >= cohort_sizes.cohort_month
),

final as (
    select
        {{ dbt.concat(["cast(grid.cohort_month as " ~ dbt.type_string() ~ ")", "'|'", "cast(grid.activity_month as " ~ dbt.type_string() ~ ")"]) }}
            as cohort_month_key,
        grid.cohort_month,
        grid.activity_month,
        cast({{ dbt.datediff('grid.cohort_month', 'grid.activity_month', 'month') }} as integer) as months_since_acquisition,
        cast(grid.cohort_customers as integer) as cohort_customers,
        cast(coalesce(activity.active_customers, 0) as integer) as active_customers,
        cast(coalesce(activity.active_customers, 0) as {{ type_double() }}) / grid.cohort_customers as retention_rate,
        cast(coalesce(revenue.revenue, 0) as numeric(18, 2)) as revenue
    from grid
    left join activity
        on grid.cohort_month = activity.cohort_month
        and grid.activity_month = activity.activity_month
    left join revenue
        on grid.cohort_month = revenue.cohort_month
        and grid.activity_month = revenue.activity_month
),

changed as (
    {{ rows_changed_from_this('final', [
        'cohort_month_key', 'cohort_month', 'activity_month', 'months_since_acquisition', 'cohort_customers',
        'active_customers', 'retention_rate', 'revenue',
    ]) }}
)

select changed.*, {{ built_at() }} as _built_at from changed
