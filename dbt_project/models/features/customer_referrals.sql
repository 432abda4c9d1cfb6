-- The CRM referral network as known on the run's as-of date: an edge from each customer to the
-- customer who referred them, as the current versions of their CRM contacts name a referrer whose
-- own contact is known then. A customer with several contacts naming different referrers has an
-- edge to each. Identity is taken as it is now (a correction, as everywhere in features): a
-- referral inside one customer (duplicate signups later merged) is no edge.
with feature_dates as {{ cte_not_materialized() }} (
    select * from {{ ref('feature_dates') }}
),

crm_versions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__customer_versions') }}
),

identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

run_date as (
    select as_of_date
    from feature_dates
    where is_as_of_date
),

crm_customers as (
    select source_key as crm_id, customer_id
    from identity
    where source_table = 'customers'
),

-- The latest version (by the CRM's modification time) of each contact delivered by the date.
current_contacts as (
    {{ current_crm_contacts('run_date', 'crm_versions', ['referred_by_crm_id', 'signup_date']) }}
),

referrals as (
    select
        referred_contacts.as_of_date,
        referred.customer_id,
        referrer.customer_id as referred_by_customer_id,
        min(referred_contacts.signup_date) as referral_date
    from current_contacts as referred_contacts
    inner join crm_customers as referred
        on referred_contacts.crm_id = referred.crm_id
    inner join current_contacts as referrer_contacts
        on referred_contacts.referred_by_crm_id = referrer_contacts.crm_id
    inner join crm_customers as referrer
        on referrer_contacts.crm_id = referrer.crm_id
    where referred.customer_id <> referrer.customer_id
    group by 1, 2, 3
),

final as (
    select
        customer_id,
        as_of_date,
        referred_by_customer_id,
        cast(referral_date as date) as referral_date
    from referrals
)

select * from final
