-- The purchase history of every customer with a revenue order on every feature date (the run's
-- as-of date and each training snapshot), from the orders as known on that date, summarised as
-- the BG/NBD and Gamma-Gamma models read it: a purchase is a day with a revenue order (two orders
-- on one day are one purchase), the first purchase starts the customer's history and every later
-- one is a repeat.
-- Incremental: see macros/incremental_features.sql.
-- depends_on: {{ ref('changed_customers') }}, {{ ref('int_customer_identity') }}
{%- set long_window_days = var('spend_window_long_days', 365) %}

with feature_dates as (
    select as_of_date from {{ ref('feature_dates') }}
),

{{ feature_work_ctes('feature_dates') }}

orders as (
    {{ known_in_feature_work(ref('orders_as_known')) }}
),

purchase_days as (
    select
        as_of_date,
        customer_id,
        order_date as purchase_date,
        sum(net_amount) as purchase_amount
    from orders
    where is_revenue
    group by 1, 2, 3
),

dated_purchases as (
    select
        purchase_days.*,
        min(purchase_date) over (partition by as_of_date, customer_id) as first_purchase_date
    from purchase_days
),

customer_purchases as (
    select
        as_of_date,
        customer_id,
        count(*) as purchase_days,
        min(purchase_date) as first_purchase_date,
        max(purchase_date) as last_purchase_date,
        sum(case when purchase_date > first_purchase_date then purchase_amount else 0 end) as repeat_amount,
        sum(case when purchase_date > {{ dbt.dateadd('day', -long_window_days, 'as_of_date') }}
            then purchase_amount else 0 end) as monetary_last_long_window
    from dated_purchases
    group by 1, 2
),

final as (
    select
        customer_id,
        as_of_date,
        cast(purchase_days as integer) as purchase_days,
        cast(purchase_days - 1 as integer) as repeat_purchases,
        cast(first_purchase_date as date) as first_purchase_date,
        cast(last_purchase_date as date) as last_purchase_date,
        cast({{ dbt.datediff('first_purchase_date', 'last_purchase_date', 'day') }} as integer) as purchase_span_days,
        cast({{ dbt.datediff('first_purchase_date', 'as_of_date', 'day') }} as integer) as purchase_age_days,
        -- The exact sum divided in double, as average_order_value: an average taken in numeric on
        -- PostgreSQL and in double on DuckDB could differ in the last digit.
        cast(repeat_amount as {{ type_double() }}) / nullif(purchase_days - 1, 0) as mean_repeat_value,
        cast(monetary_last_long_window as numeric(18, 2)) as monetary_last_365_days,
        {{ built_at() }} as _built_at
    from customer_purchases
)

select * from final
