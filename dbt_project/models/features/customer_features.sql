-- Features of every customer known on the run's as-of date, as known on that date.
with snapshots as {{ cte_not_materialized() }} (
    select * from {{ ref('customer_feature_snapshots') }}
),

feature_dates as {{ cte_not_materialized() }} (
    select * from {{ ref('feature_dates') }}
),

final as (
    select {{ feature_columns_of('customer_feature_snapshots', 'snapshots') }}
    from snapshots
    inner join feature_dates
        on snapshots.as_of_date = feature_dates.as_of_date
    where feature_dates.is_as_of_date
)

select * from final
