with identities as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

crm_contacts as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__customers') }}
),

record_emails as (
    select 'sales' as source_system, cast(order_id as {{ dbt.type_string() }}) as source_key, customer_email as email
    from {{ ref('stg_sales__orders') }}
    where is_email_valid
    union all
    select 'service', cast(ticket_id as {{ dbt.type_string() }}), requester_email
    from {{ ref('stg_service__tickets') }}
    where is_email_valid
),

customers as (
    select distinct customer_id from identities
),

customer_contacts as (
    select identities.customer_id, crm_contacts.*
    from identities
    inner join crm_contacts
        on identities.source_system = 'crm'
        and identities.source_key = crm_contacts.crm_id
),

-- A customer with several CRM contacts (a duplicate signup) takes its attributes from the one
-- with a valid email, then the most recently modified, then the oldest id: the original.
best_contact as (
    {{ first_row_per_group('customer_contacts', ['customer_id'], ['is_email_valid desc', 'modified_at desc', 'crm_id']) }}
),

contact_counts as (
    select customer_id, count(*) as crm_contact_count, min(signup_date) as first_signup_date
    from customer_contacts
    group by customer_id
),

-- The email of a customer known to sales or service only, or whose best contact's email is invalid.
fallback_emails as (
    select identities.customer_id, min(record_emails.email) as email
    from identities
    inner join record_emails
        on identities.source_system = record_emails.source_system
        and identities.source_key = record_emails.source_key
    group by identities.customer_id
),

referrers as (
    select source_key as crm_id, customer_id
    from identities
    where source_system = 'crm'
),

final as (
    select
        cast(customers.customer_id as {{ dbt.type_string() }}) as customer_id,
        cast(best_contact.crm_id as {{ dbt.type_string() }}) as crm_id,
        cast(coalesce(contact_counts.crm_contact_count, 0) as integer) as crm_contact_count,
        cast(best_contact.crm_id is not null as boolean) as has_crm_contact,
        cast(case when best_contact.is_email_valid then best_contact.email else fallback_emails.email end
            as {{ dbt.type_string() }}) as email,
        cast(best_contact.first_name as {{ dbt.type_string() }}) as first_name,
        cast(best_contact.last_name as {{ dbt.type_string() }}) as last_name,
        cast(best_contact.phone as {{ dbt.type_string() }}) as phone,
        cast(best_contact.birth_date as date) as birth_date,
        cast(best_contact.gender as {{ dbt.type_string() }}) as gender,
        cast(best_contact.city as {{ dbt.type_string() }}) as city,
        cast(best_contact.country_code as {{ dbt.type_string() }}) as country_code,
        cast(contact_counts.first_signup_date as date) as signup_date,
        cast(best_contact.acquisition_channel as {{ dbt.type_string() }}) as acquisition_channel,
        cast(best_contact.loyalty_tier as {{ dbt.type_string() }}) as loyalty_tier,
        cast(best_contact.is_marketing_opt_in as boolean) as is_marketing_opt_in,
        cast(best_contact.referred_by_crm_id as {{ dbt.type_string() }}) as referred_by_crm_id,
        cast(referrers.customer_id as {{ dbt.type_string() }}) as referred_by_customer_id,
        cast(best_contact.is_valid as boolean) as is_valid,
        cast(best_contact.invalid_reason as {{ dbt.type_string() }}) as invalid_reason,
        cast(best_contact.modified_at as {{ dbt.type_timestamp() }}) as modified_at
    from customers
    left join best_contact on customers.customer_id = best_contact.customer_id
    left join contact_counts on customers.customer_id = contact_counts.customer_id
    left join fallback_emails on customers.customer_id = fallback_emails.customer_id
    left join referrers on best_contact.referred_by_crm_id = referrers.crm_id
)

select * from final
