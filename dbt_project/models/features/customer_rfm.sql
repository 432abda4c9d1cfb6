-- Recency, frequency and monetary value of every customer with a revenue order known on the
-- as-of date: the input of the RFM segmentation.
with customer_features as {{ cte_not_materialized() }} (
    select * from {{ ref('customer_features') }}
),

final as (
    select
        customer_id,
        as_of_date,
        recency_days,
        frequency,
        monetary,
        first_order_date,
        last_order_date
    from customer_features
    where frequency > 0
)

select * from final
