-- Labels of each customer with an order known on a training snapshot date (see feature_dates),
-- from the orders known on the run's as-of date: churn (no order placed in the churn window after
-- the snapshot) and the net revenue of the short and long spend windows after it (vars
-- spend_window_short_days and spend_window_long_days; the columns are named for their defaults, 90
-- and 365 days). A spend label whose window runs past the as-of date is not known yet: null, with
-- its _is_complete flag false. The training set (a view) joins them to the snapshot's features.
{%- set as_of_date = as_of_date_sql() %}
{%- set short_window_days = var('spend_window_short_days', 90) %}
{%- set long_window_days = var('spend_window_long_days', 365) %}
{#- Incremental (macros/incremental_features.sql): a snapshot date is redone whole when it becomes a
    training snapshot or when one of its spend windows closes (its _is_complete flag turns true);
    a changed customer on every date. -#}
-- depends_on: {{ ref('changed_customers') }}

with snapshots as {{ cte_not_materialized() }} (
    select * from {{ ref('customer_feature_snapshots') }}
),

feature_dates as {{ cte_not_materialized() }} (
    select * from {{ ref('feature_dates') }}
),

{#- Distinct here: PostgreSQL plans a union's output at the sum of its inputs, and took the rows of
    every held date for dates (233,566 planned for 0), then every snapshot for the day's work. -#}
{% set dates_with_a_closing_window -%}
    select distinct as_of_date from {{ this }}
    where spend_next_90_days_is_complete
            <> (cast({{ dbt.dateadd('day', short_window_days, 'as_of_date') }} as date) <= {{ as_of_date }})
        or spend_next_365_days_is_complete
            <> (cast({{ dbt.dateadd('day', long_window_days, 'as_of_date') }} as date) <= {{ as_of_date }})
{%- endset %}
{{ feature_work_ctes('feature_dates', 'is_training_snapshot', dates_with_a_closing_window) }}

orders as {{ cte_not_materialized() }} (
    select * from {{ ref('orders_as_known') }}
),

-- Labels use what is known on the as-of date: a return after the snapshot is not spend.
orders_now as (
    select * from orders
    where {{ is_known_on(as_of_date, 'orders') }}
),

training_rows as (
    select
        snapshots.customer_id,
        snapshots.as_of_date,
        feature_dates.churn_window_end,
        {{ dbt.dateadd('day', short_window_days, 'snapshots.as_of_date') }} as spend_window_short_end,
        {{ dbt.dateadd('day', long_window_days, 'snapshots.as_of_date') }} as spend_window_long_end
    from snapshots
    inner join feature_dates
        on snapshots.as_of_date = feature_dates.as_of_date
    {{- feature_work_joins('snapshots.as_of_date', 'snapshots.customer_id', labels=true) }}
    where feature_dates.is_training_snapshot
        and snapshots.order_count > 0
        and {{ in_feature_work() }}
),

future_orders as (
    select
        training_rows.customer_id,
        training_rows.as_of_date,
        sum(case when orders_now.order_date <= training_rows.churn_window_end then 1 else 0 end) as orders_in_churn_window,
        sum(case when orders_now.is_revenue and orders_now.order_date <= training_rows.spend_window_short_end
            then orders_now.net_amount else 0 end) as spend_next_90_days,
        sum(case when orders_now.is_revenue and orders_now.order_date <= training_rows.spend_window_long_end
            then orders_now.net_amount else 0 end) as spend_next_365_days
    from training_rows
    inner join orders_now
        on training_rows.customer_id = orders_now.customer_id
        and orders_now.order_date > training_rows.as_of_date
    group by 1, 2
),

labels as (
    select
        training_rows.customer_id,
        training_rows.as_of_date,
        coalesce(future_orders.orders_in_churn_window, 0) = 0 as is_churned,
        cast(training_rows.spend_window_short_end as date) <= {{ as_of_date }} as spend_next_90_days_is_complete,
        cast(training_rows.spend_window_long_end as date) <= {{ as_of_date }} as spend_next_365_days_is_complete,
        coalesce(future_orders.spend_next_90_days, 0) as spend_next_90_days,
        coalesce(future_orders.spend_next_365_days, 0) as spend_next_365_days
    from training_rows
    left join future_orders
        on training_rows.customer_id = future_orders.customer_id
        and training_rows.as_of_date = future_orders.as_of_date
),

final as (
    select
        customer_id,
        as_of_date,
        is_churned,
        cast(case when spend_next_90_days_is_complete then spend_next_90_days end as numeric(18, 2))
            as spend_next_90_days,
        spend_next_90_days_is_complete,
        cast(case when spend_next_365_days_is_complete then spend_next_365_days end as numeric(18, 2))
            as spend_next_365_days,
        spend_next_365_days_is_complete,
        {{ built_at() }} as _built_at
    from labels
)

select * from final
