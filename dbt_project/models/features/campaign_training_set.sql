-- Training rows for campaign uplift: one row per customer in each campaign that has ended by the
-- run's as-of date (valid members with a customer), whether they were treated and converted, and
-- their features as known on the latest feature date strictly before the campaign's start
-- (as_of_date here, as in customer_features and training_set: the date the features are as of).
-- Feature dates are period ends (see feature_dates), so the features are at most a period (by
-- default a month, 1-31 days) old at the start: computing them on every start would triple the
-- feature snapshots. They are the columns of customer_features, by the same definition, so the
-- uplift model trains on what it scores.
-- A member with no feature row on that date (the customer was not known yet, or the campaign
-- started before the first feature date) is dropped: whether one has a row was settled before the
-- campaign, so dropping keeps treatment and control comparable. A customer in a campaign through
-- two CRM contacts is one row: treated when either was, converted when either did.
-- is_churned: the 90-day churn label of that snapshot (training_labels) when known by the as-of
-- date, else null; the baseline "target the highest churn risk" learns from it.
{%- set as_of_date = as_of_date_sql() %}

with campaign_responses as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_campaign_responses') }}
),

feature_dates as {{ cte_not_materialized() }} (
    select * from {{ ref('feature_dates') }}
),

snapshots as {{ cte_not_materialized() }} (
    select * from {{ ref('customer_feature_snapshots') }}
),

training_labels as {{ cte_not_materialized() }} (
    select * from {{ ref('training_labels') }}
),

campaign_members as (
    select
        campaign_id,
        campaign_start_date,
        campaign_end_date,
        campaign_channel,
        customer_id,
        max(case when is_treatment then 1 else 0 end) = 1 as is_treatment,
        max(case when has_converted then 1 else 0 end) = 1 as has_converted
    from campaign_responses
    where is_valid
        and customer_id is not null
        and campaign_end_date <= {{ as_of_date }}
    group by 1, 2, 3, 4, 5
),

campaigns as (
    select distinct
        campaign_id,
        campaign_start_date
    from campaign_members
),

campaign_feature_dates as (
    select
        campaigns.campaign_id,
        max(feature_dates.as_of_date) as feature_date
    from campaigns
    inner join feature_dates
        on feature_dates.as_of_date < campaigns.campaign_start_date
    group by 1
),

final as (
    select
        campaign_members.campaign_id,
        campaign_members.campaign_start_date,
        campaign_members.campaign_end_date,
        campaign_members.campaign_channel,
        campaign_members.is_treatment,
        campaign_members.has_converted,
        training_labels.is_churned,
        {{ feature_columns_of('customer_feature_snapshots', 'snapshots') }}
    from campaign_members
    inner join campaign_feature_dates
        on campaign_members.campaign_id = campaign_feature_dates.campaign_id
    inner join snapshots
        on campaign_feature_dates.feature_date = snapshots.as_of_date
        and campaign_members.customer_id = snapshots.customer_id
    left join training_labels
        on snapshots.as_of_date = training_labels.as_of_date
        and snapshots.customer_id = training_labels.customer_id
)

select * from final
