-- Identity resolution: one row per CRM contact, order and ticket with the customer it belongs to.
--
-- Identifiers (a CRM id, a valid normalised email) link the records holding them; a customer is a
-- connected group of records and identifiers, so links are transitive (two CRM contacts sharing an
-- email become one customer, with every order placed under either id or the email). The groups are
-- found by a recursive walk over identifier-to-identifier links (two identifiers of one record are
-- linked). It always ends: UNION keeps each (identifier, reached identifier) pair once, and there
-- are finitely many. Its size is the sum over groups of (identifiers in the group) squared, a
-- handful per person; invalid emails ('n/a', '') never become identifiers, so placeholders can't
-- chain strangers into one giant group.
with recursive

crm_contacts as (
    select crm_id from {{ ref('stg_crm__customers') }}
),

-- Every valid email a contact ever had: orders placed under a former email still find them.
crm_emails as (
    select distinct crm_id, email
    from {{ ref('stg_crm__customer_versions') }}
    where is_email_valid
),

orders as (
    select order_id, crm_id, customer_email, is_email_valid from {{ ref('stg_sales__orders') }}
),

tickets as (
    select ticket_id, requester_email, is_email_valid from {{ ref('stg_service__tickets') }}
),

source_records as (
    select 'crm' as source_system, 'customers' as source_table, crm_id as source_key from crm_contacts
    union all
    select 'sales', 'orders', cast(order_id as {{ dbt.type_string() }}) from orders
    union all
    select 'service', 'tickets', cast(ticket_id as {{ dbt.type_string() }}) from tickets
),

-- An identifier is written 'crm_id:<id>' or 'email:<email>': every CRM id sorts before every email,
-- so a group's smallest identifier is its smallest CRM id when it has one.
record_identifiers as (
    select 'crm' as source_system, 'customers' as source_table, crm_id as source_key,
        'crm_id' as identifier_type, 'crm_id:' || crm_id as identifier
    from crm_contacts
    union all
    select 'crm', 'customers', crm_emails.crm_id, 'email', 'email:' || crm_emails.email
    from crm_emails
    inner join crm_contacts on crm_emails.crm_id = crm_contacts.crm_id
    union all
    select 'sales', 'orders', cast(order_id as {{ dbt.type_string() }}), 'crm_id', 'crm_id:' || crm_id
    from orders
    where crm_id is not null
    union all
    select 'sales', 'orders', cast(order_id as {{ dbt.type_string() }}), 'email', 'email:' || customer_email
    from orders
    where is_email_valid
    union all
    select 'service', 'tickets', cast(ticket_id as {{ dbt.type_string() }}), 'email', 'email:' || requester_email
    from tickets
    where is_email_valid
),

identifier_links as (
    select distinct
        one.identifier as from_identifier,
        other.identifier as to_identifier
    from record_identifiers as one
    inner join record_identifiers as other
        on one.source_system = other.source_system
        and one.source_table = other.source_table
        and one.source_key = other.source_key
        and one.identifier <> other.identifier
),

reachable (identifier, reached_identifier) as (
    select distinct identifier, identifier from record_identifiers
    union
    select reachable.identifier, identifier_links.to_identifier
    from reachable
    inner join identifier_links on reachable.reached_identifier = identifier_links.from_identifier
),

identifier_groups as (
    select identifier, min(reached_identifier) as group_identifier
    from reachable
    group by identifier
),

-- An identifier held by more than one record is what links those records together.
shared_identifiers as (
    select identifier
    from record_identifiers
    group by identifier
    having count(*) > 1
),

record_groups as (
    select
        record_identifiers.source_system,
        record_identifiers.source_table,
        record_identifiers.source_key,
        min(identifier_groups.group_identifier) as group_identifier,
        max(case when record_identifiers.identifier_type = 'crm_id' and shared_identifiers.identifier is not null
            then 1 else 0 end) as is_linked_by_crm_id,
        max(case when record_identifiers.identifier_type = 'email' and shared_identifiers.identifier is not null
            then 1 else 0 end) as is_linked_by_email
    from record_identifiers
    inner join identifier_groups on record_identifiers.identifier = identifier_groups.identifier
    left join shared_identifiers on record_identifiers.identifier = shared_identifiers.identifier
    group by 1, 2, 3
),

final as (
    select
        cast(source_records.source_system as {{ dbt.type_string() }}) as source_system,
        cast(source_records.source_table as {{ dbt.type_string() }}) as source_table,
        cast(source_records.source_key as {{ dbt.type_string() }}) as source_key,
        -- A record without any identifier is a customer of its own.
        cast(md5(coalesce(
            record_groups.group_identifier,
            'record:' || source_records.source_system || ':' || source_records.source_table || ':' || source_records.source_key
        )) as {{ dbt.type_string() }}) as customer_id,
        cast(case
            when record_groups.is_linked_by_crm_id = 1 and record_groups.is_linked_by_email = 1 then 'crm_id_and_email'
            when record_groups.is_linked_by_crm_id = 1 then 'crm_id'
            when record_groups.is_linked_by_email = 1 then 'email'
            else 'unmatched'
        end as {{ dbt.type_string() }}) as match_method
    from source_records
    left join record_groups
        on source_records.source_system = record_groups.source_system
        and source_records.source_table = record_groups.source_table
        and source_records.source_key = record_groups.source_key
)

select * from final
