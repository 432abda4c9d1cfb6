{#- The dates features are computed for: the run's as-of date, and the training snapshots: the last
    day of each period (var training_snapshot_period, default month) holding orders, early enough
    that the churn window after it (var churn_horizon_days, default 90) has ended by the as-of date,
    so every label is complete. -#}
{%- set as_of_date = "cast('" ~ var('as_of_date') ~ "' as date)" -%}
{%- set period = var('training_snapshot_period', 'month') -%}
{%- set horizon_days = var('churn_horizon_days', 90) -%}

with orders as (
    select order_date from {{ ref('fct_orders') }}
),

period_ends as (
    select distinct
        cast({{ dbt.last_day('order_date', period) }} as date) as snapshot_date
    from orders
    where order_date <= {{ as_of_date }}
),

dates as (
    select
        {{ as_of_date }} as as_of_date,
        false as is_training_snapshot
    union all
    select
        snapshot_date as as_of_date,
        true as is_training_snapshot
    from period_ends
    where cast({{ dbt.dateadd('day', horizon_days, 'snapshot_date') }} as date) <= {{ as_of_date }}
),

final as (
    select
        as_of_date,
        is_training_snapshot,
        cast({{ dbt.dateadd('day', horizon_days, 'as_of_date') }} as date) as churn_window_end
    from dates
)

select * from final
