{#- The dates features are computed for, one row per date: the run's as-of date and the end of each
    period (var training_snapshot_period, default month) with orders, up to the as-of date. A
    period end is a training snapshot when the churn window after it (var churn_horizon_days,
    default 90) has ended by the as-of date, so every label is complete; the later period ends
    serve point-in-time features only (campaign_training_set reads the latest one before each
    campaign's start). A period end falling on the as-of date is that one row. -#}
{%- set as_of_date = as_of_date_sql() -%}
{%- set period = var('training_snapshot_period', 'month') -%}
{%- set horizon_days = var('churn_horizon_days', 90) -%}

with orders as (
    select order_date from {{ ref('fct_orders') }}
),

period_ends as (
    select distinct
        cast({{ dbt.last_day('order_date', period) }} as date) as feature_date
    from orders
    where order_date <= {{ as_of_date }}
),

dates as (
    select {{ as_of_date }} as feature_date
    union
    select feature_date
    from period_ends
    where feature_date <= {{ as_of_date }}
),

final as (
    select
        feature_date as as_of_date,
        feature_date = {{ as_of_date }} as is_as_of_date,
        feature_date < {{ as_of_date }}
            and cast({{ dbt.dateadd('day', horizon_days, 'feature_date') }} as date) <= {{ as_of_date }}
            as is_training_snapshot,
        cast({{ dbt.dateadd('day', horizon_days, 'feature_date') }} as date) as churn_window_end
    from dates
)

select * from final
