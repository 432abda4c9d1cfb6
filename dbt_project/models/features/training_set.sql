-- Training rows for churn and spend models: each labelled snapshot (training_labels) with the
-- features and purchase summary of its customer as known on its date. A view: the features are
-- stored once, in customer_feature_snapshots, and a snapshot rewritten there (an identity merge)
-- is read here as rewritten; training_labels redoes the same customers' labels in the same run.

with labels as {{ cte_not_materialized() }} (
    select * from {{ ref('training_labels') }}
),

snapshots as {{ cte_not_materialized() }} (
    select * from {{ ref('customer_feature_snapshots') }}
),

purchase_summaries as {{ cte_not_materialized() }} (
    select * from {{ ref('customer_purchase_summary') }}
),

final as (
    select
        {{ feature_columns_of('customer_feature_snapshots', 'snapshots') }},
        purchase_summaries.purchase_days,
        purchase_summaries.repeat_purchases,
        purchase_summaries.first_purchase_date,
        purchase_summaries.last_purchase_date,
        purchase_summaries.purchase_span_days,
        purchase_summaries.purchase_age_days,
        purchase_summaries.mean_repeat_value,
        purchase_summaries.monetary_last_365_days,
        labels.is_churned,
        labels.spend_next_90_days,
        labels.spend_next_90_days_is_complete,
        labels.spend_next_365_days,
        labels.spend_next_365_days_is_complete,
        labels._built_at
    from labels
    inner join snapshots
        on labels.customer_id = snapshots.customer_id
        and labels.as_of_date = snapshots.as_of_date
    -- On the snapshot's key, not the label's (the same values): with the label's, DuckDB hashed
    -- labels for a right join whose output fed a second hash table, and a test reading this view
    -- ran out of memory when its limit was just above what that table needed (350-450 MB at
    -- 100,000 customers; at 4 GB at a million, after the feature build). On the snapshot's key
    -- the summaries join the snapshots first, and the same test passed at every limit tried.
    left join purchase_summaries
        on snapshots.customer_id = purchase_summaries.customer_id
        and snapshots.as_of_date = purchase_summaries.as_of_date
)

select * from final
