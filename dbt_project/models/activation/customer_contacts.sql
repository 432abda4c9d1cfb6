-- How to reach each customer, and whether they may be contacted, as known on the run's as-of date:
-- the input of the activation list a CRM tool imports. Contact details are personal data, so this
-- schema has its own read role; BI's role does not read it.
{%- set as_of_date = as_of_date_sql() %}

with crm_versions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__customer_versions') }}
),

identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

features as {{ cte_not_materialized() }} (
    select * from {{ ref('customer_features') }}
),

run_date as (
    select {{ as_of_date }} as as_of_date
),

crm_customers as (
    select source_key as crm_id, customer_id
    from identity
    where source_table = 'customers'
),

-- The latest version (by the CRM's modification time) of each contact delivered by the date.
current_contacts as (
    {{ current_crm_contacts('run_date', 'crm_versions', ['first_name', 'last_name', 'email', 'is_email_valid', 'phone', 'is_marketing_opt_in']) }}
),

customer_contacts as (
    select
        crm_customers.customer_id,
        current_contacts.*,
        -- The contact a message goes to: the most recently modified one with a valid email.
        row_number() over (
            partition by crm_customers.customer_id
            order by
                case when current_contacts.is_email_valid then 0 else 1 end,
                current_contacts.modified_at desc,
                current_contacts.crm_id
        ) as preference
    from current_contacts
    inner join crm_customers
        on current_contacts.crm_id = crm_customers.crm_id
),

-- Consent is the strict reading across a customer's contacts: opted in only when every current
-- contact says so. One contact's opt-out (a duplicate signup that said no) is the customer's no.
consent as (
    select
        customer_id,
        min(case when is_marketing_opt_in then 1 else 0 end) = 1 as is_marketing_opt_in,
        count(*) as crm_contacts
    from customer_contacts
    group by customer_id
),

final as (
    select
        chosen.customer_id,
        chosen.as_of_date,
        chosen.crm_id,
        chosen.first_name,
        chosen.last_name,
        -- The reserved .invalid domain reaches no one: it is what an erased customer's email
        -- becomes (warehouse/erasure.py), and such a customer is never contacted.
        case when chosen.is_email_valid and chosen.email not like '%.invalid' then chosen.email end as email,
        chosen.phone,
        consent.is_marketing_opt_in,
        cast(consent.crm_contacts as integer) as crm_contacts,
        cast(coalesce(features.open_tickets, 0) as integer) as open_tickets,
        features.favourite_channel
    from customer_contacts as chosen
    inner join consent
        on chosen.customer_id = consent.customer_id
    left join features
        on chosen.customer_id = features.customer_id
    where chosen.preference = 1
)

select * from final
