-- Identity resolution: one row per CRM contact, order and ticket with the customer it belongs to.
--
-- Identifiers (a CRM id, a valid normalised email) link the records holding them; a customer is a
-- connected group of records and identifiers, so links are transitive (two CRM contacts sharing an
-- email become one customer, with every order placed under either id or the email). The groups are
-- found by min-label propagation over identifier-to-identifier links (two identifiers of one record
-- are linked), a fixed number of rounds (var identity_max_rounds) written out as plain joins: no
-- recursive query, so every engine, Spark's included, runs the same algorithm. Each linked
-- identifier starts labelled with itself. A round hooks every label to the smallest label linked
-- to an identifier it labels, moves each identifier to the smallest of its label, its label's label
-- and their hooks, then jumps once more (the label of its new label). Labels only fall and stay
-- within the group; when no link joins two different labels the group is settled on its smallest
-- identifier, what a walk of the whole group finds. A group still unsettled after the last round
-- fails the build naming an identifier of it (raise the var). Simulated on chains of identifiers
-- in random order (the worst shape seen), the most rounds over many orders: 4 identifiers settle
-- in 2, 16 in 4, 256 in 7, 5,000 in 10; random trees of 5,000 in 6. Invalid emails ('n/a', '')
-- never become identifiers, and neither does an email held by more CRM ids than the var
-- identity_max_crm_ids_per_email (a shop's walk-in address, a family's or company's shared one), so
-- neither placeholders nor shared addresses can chain strangers into one giant group.
--
-- The customer key is kept for life. A new group is keyed by a hash of its smallest identifier
-- (macro new_customer_key: 16 hex digits of its md5); on later builds (this table reads its own
-- previous state, so a --full-refresh keeps keys too) a group keeps the key most of its records
-- already had: when two customers merge, the one with more records keeps its key and the other's
-- becomes an alias (customer_key_aliases); when a group splits, the part with more of the key's
-- records keeps it and the other part gets a key of its own.
--
-- Incremental: a day changes few groups, and resolving all of them again cost 12-15 s of a steady
-- day at 100,000 customers (2.2M records; the rounds are cheap, the per-record joins are not). A
-- run redoes only the records of the customers a change can reach and writes only those rows (see
-- affected_records); a --full-refresh, a change of the vars above (they regroup everyone) or a
-- table from before `_built_at` redoes every record.
{#- The key's most selective column first: PostgreSQL indexes an incremental model's unique key in
    its order (macros/index_written_rows.sql), and readers look records up by table and key. -#}
{{ config(
    materialized='incremental',
    unique_key=['source_key', 'source_table', 'source_system'],
    incremental_strategy='delete+insert',
    on_schema_change='sync_all_columns',
    post_hook=[
        "{{ delete_staged_rows_of_deleted_records(ref('stg_crm__customer_versions'), ['crm_id'], this_keys=['source_key'], rows_of=\"source_system = 'crm' and source_table = 'customers'\") }}",
        "{{ delete_staged_rows_of_deleted_records(ref('stg_sales__order_versions'), ['order_id'], this_keys=['source_key'], rows_of=\"source_system = 'sales' and source_table = 'orders'\") }}",
        "{{ delete_staged_rows_of_deleted_records(ref('stg_service__ticket_versions'), ['ticket_id'], this_keys=['source_key'], rows_of=\"source_system = 'service' and source_table = 'tickets'\") }}",
    ],
) }}
{#- Unit tests have no `this`: they start from nothing. #}
{%- set previous_identity = load_relation(this) if this is not none else none %}
{#- Installs from before key_changed_at: every record counts as moved once, so the feature models
    redo every customer on their next run. -#}
{%- set previous_knows_key_changes = previous_identity is not none
    and has_column(previous_identity, 'key_changed_at') %}
{#- The two vars as '<identity_max_crm_ids_per_email>:<identity_max_rounds>', on every row: spelled
    out with their names it was 55 of a row's 196 bytes (120 MB at 100,000 customers on PostgreSQL). -#}
{%- set resolution_settings = var('identity_max_crm_ids_per_email') ~ ':' ~ var('identity_max_rounds') %}
{%- set only_affected_records = execute and is_incremental() and has_column(this, '_resolution_settings')
    and (run_query('select _resolution_settings from ' ~ this ~ ' limit 1').columns[0].values() | list) == [resolution_settings] %}
{#- The CTEs up to the links between identifiers, kept as text: Spark's label propagation runs
    them as statements of their own (macros/identifier_label_rounds.sql). -#}
{%- set linked_identifiers_ctes -%}
with all_crm_contacts as (
    select crm_id from {{ ref('stg_crm__customers') }}
),

-- Every valid email a contact ever had: orders placed under a former email still find them.
all_crm_emails as (
    select distinct versions.crm_id, versions.email
    from {{ ref('stg_crm__customer_versions') }} as versions
    inner join all_crm_contacts on versions.crm_id = all_crm_contacts.crm_id
    where versions.is_email_valid
),

all_orders as (
    select order_id, crm_id, customer_email, is_email_valid from {{ ref('stg_sales__orders') }}
),

all_tickets as (
    select ticket_id, requester_email, is_email_valid from {{ ref('stg_service__tickets') }}
),

{% if only_affected_records -%}
-- Records with a version loaded since this table was built: new, changed or deleted (a tombstone).
changed_crm_ids as (
    select crm_id from {{ ref('stg_crm__customer_versions') }}
    where {{ changed_since_this_was_built('_loaded_at') }}
),

changed_order_ids as (
    select order_id from {{ ref('stg_sales__order_versions') }}
    where {{ changed_since_this_was_built('_loaded_at') }}
),

changed_ticket_ids as (
    select ticket_id from {{ ref('stg_service__ticket_versions') }}
    where {{ changed_since_this_was_built('_loaded_at') }}
),

-- Every identifier any version of a changed record held, over-shared ones included: a change can
-- add or drop a link through any of them, or move an email across the over-sharing cap.
touched_crm_ids as (
    {{ crm_ids_of_versions('changed_order_ids', 'changed_crm_ids') }}
),

touched_emails as (
    {{ emails_of_versions('changed_order_ids', 'changed_ticket_ids', 'changed_crm_ids') }}
),

-- The changed records and every record holding a touched identifier now.
touched_records as (
    select 'customers' as source_table, crm_id as source_key from changed_crm_ids
    union
    select 'orders', cast(order_id as {{ dbt.type_string() }}) from changed_order_ids
    union
    select 'tickets', cast(ticket_id as {{ dbt.type_string() }}) from changed_ticket_ids
    union
    select 'customers', crm_id from all_crm_contacts
    where crm_id in (select crm_id from touched_crm_ids)
    union
    select 'customers', crm_id from all_crm_emails
    where email in (select email from touched_emails)
    union
    -- Two semi-joins, not one OR of subqueries: PostgreSQL cannot join an OR, and scanned the
    -- touched identifiers again for each of 2.2M orders (over six minutes at 100,000 customers).
    select 'orders', cast(order_id as {{ dbt.type_string() }}) from all_orders
    where crm_id in (select crm_id from touched_crm_ids)
    union
    select 'orders', cast(order_id as {{ dbt.type_string() }}) from all_orders
    where is_email_valid and customer_email in (select email from touched_emails)
    union
    select 'tickets', cast(ticket_id as {{ dbt.type_string() }}) from all_tickets
    where is_email_valid and requester_email in (select email from touched_emails)
),

-- The records a run redoes: the touched ones and every record of a customer one of them had. The
-- set is closed: a record outside it shares no identifier with one inside (an unchanged record
-- shares its identifiers with its customer's records, as before, unless an email crossed the
-- over-sharing cap, which only a touched record can make it do), so its groups come out as a
-- resolution of everything would find them, and a previous key's records are all inside it.
affected_records as (
    select source_table, source_key from touched_records
    union
    select previous.source_table, previous.source_key
    from {{ this }} as previous
    where previous.customer_id in (
        select earlier.customer_id
        from {{ this }} as earlier
        inner join touched_records
            on earlier.source_table = touched_records.source_table
            and earlier.source_key = touched_records.source_key
    )
),

crm_contacts as (
    select crm_id from all_crm_contacts
    where crm_id in (select source_key from affected_records where source_table = 'customers')
),

crm_emails as (
    select * from all_crm_emails
    where crm_id in (select crm_id from crm_contacts)
),

orders as (
    select * from all_orders
    where cast(order_id as {{ dbt.type_string() }}) in (select source_key from affected_records where source_table = 'orders')
),

tickets as (
    select * from all_tickets
    where cast(ticket_id as {{ dbt.type_string() }}) in (select source_key from affected_records where source_table = 'tickets')
),

-- Whether an email is over-shared counts every CRM id holding it, inside the affected records or not.
affected_emails as (
    select email from crm_emails
    union
    select customer_email from orders where is_email_valid
    union
    select requester_email from tickets where is_email_valid
),

email_crm_ids as (
    select email, crm_id from all_crm_emails
    where email in (select email from affected_emails)
    union all
    select customer_email, crm_id from all_orders
    where is_email_valid and crm_id is not null and customer_email in (select email from affected_emails)
),
{%- else %}
crm_contacts as (select * from all_crm_contacts),

crm_emails as (select * from all_crm_emails),

orders as (select * from all_orders),

tickets as (select * from all_tickets),

-- An email ties to a CRM id wherever a contact or an order holds both. Two CRM ids on one email
-- are one person's duplicate signup; many are people sharing an address, which links no one.
email_crm_ids as (
    select email, crm_id from all_crm_emails
    union all
    select customer_email, crm_id from all_orders
    where is_email_valid and crm_id is not null
),
{%- endif %}

source_records as (
    select 'crm' as source_system, 'customers' as source_table, crm_id as source_key from crm_contacts
    union all
    select 'sales', 'orders', cast(order_id as {{ dbt.type_string() }}) from orders
    union all
    select 'service', 'tickets', cast(ticket_id as {{ dbt.type_string() }}) from tickets
),

over_shared_emails as (
    select 'email:' || email as identifier
    from email_crm_ids
    group by email
    having count(distinct crm_id) > {{ var('identity_max_crm_ids_per_email') }}
),

-- An identifier is written 'crm_id:<id>' or 'email:<email>': every CRM id sorts before every email,
-- so a group's smallest identifier is its smallest CRM id when it has one.
held_identifiers as (
    select 'crm' as source_system, 'customers' as source_table, crm_id as source_key,
        'crm_id' as identifier_type, 'crm_id:' || crm_id as identifier
    from crm_contacts
    union all
    select 'crm', 'customers', crm_id, 'email', 'email:' || email
    from crm_emails
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

-- The identifiers that link records: all they hold but over-shared emails.
record_identifiers as (
    select held_identifiers.*
    from held_identifiers
    left join over_shared_emails on held_identifiers.identifier = over_shared_emails.identifier
    where over_shared_emails.identifier is null
),

records_with_over_shared_email as (
    select distinct held_identifiers.source_system, held_identifiers.source_table, held_identifiers.source_key
    from held_identifiers
    inner join over_shared_emails on held_identifiers.identifier = over_shared_emails.identifier
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
)
{%- endset %}
{{ linked_identifiers_ctes }},

{{ identifier_label_rounds(linked_identifiers_ctes, var('identity_max_rounds')) }}
-- Settled when every link joins two equal labels; otherwise the build stops here, naming one.
unsettled_identifiers as (
    select distinct number_links.from_number as identifier
    from number_links
    inner join labels_{{ var('identity_max_rounds') }} as own on number_links.from_number = own.identifier
    inner join labels_{{ var('identity_max_rounds') }} as other on number_links.to_number = other.identifier
    where own.label <> other.label
),

identifier_groups as (
    select
        identifiers.identifier,
        case
            when unsettled_identifiers.identifier is null then group_names.identifier
            else {{ fail_with_message(
                "'identity resolution did not settle within var identity_max_rounds = " ~ var('identity_max_rounds')
                ~ " rounds: the group of ' || identifiers.identifier || ' needs more; raise the var'") }}
        end as group_identifier
    from labels_{{ var('identity_max_rounds') }} as labels
    inner join identifier_numbers as identifiers on labels.identifier = identifiers.identifier_number
    inner join identifier_numbers as group_names on labels.label = group_names.identifier_number
    left join unsettled_identifiers on labels.identifier = unsettled_identifiers.identifier
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
        -- An identifier no other one links to is a group of its own.
        min(coalesce(identifier_groups.group_identifier, record_identifiers.identifier)) as group_identifier,
        max(case when record_identifiers.identifier_type = 'crm_id' and shared_identifiers.identifier is not null
            then 1 else 0 end) as is_linked_by_crm_id,
        max(case when record_identifiers.identifier_type = 'email' and shared_identifiers.identifier is not null
            then 1 else 0 end) as is_linked_by_email
    from record_identifiers
    left join identifier_groups on record_identifiers.identifier = identifier_groups.identifier
    left join shared_identifiers on record_identifiers.identifier = shared_identifiers.identifier
    group by 1, 2, 3
),

grouped_records as (
    select
        source_records.source_system,
        source_records.source_table,
        source_records.source_key,
        -- A record without any identifier is a customer of its own.
        coalesce(
            record_groups.group_identifier,
            'record:' || source_records.source_system || ':' || source_records.source_table || ':' || source_records.source_key
        ) as identity_group,
        case
            when record_groups.is_linked_by_crm_id = 1 and record_groups.is_linked_by_email = 1 then 'crm_id_and_email'
            when record_groups.is_linked_by_crm_id = 1 then 'crm_id'
            when record_groups.is_linked_by_email = 1 then 'email'
            -- Linked by nothing because its email was ignored: a steward may want to look.
            when records_with_over_shared_email.source_key is not null then 'over_shared_email'
            else 'unmatched'
        end as match_method
    from source_records
    left join record_groups
        on source_records.source_system = record_groups.source_system
        and source_records.source_table = record_groups.source_table
        and source_records.source_key = record_groups.source_key
    left join records_with_over_shared_email
        on source_records.source_system = records_with_over_shared_email.source_system
        and source_records.source_table = records_with_over_shared_email.source_table
        and source_records.source_key = records_with_over_shared_email.source_key
),

{% if previous_identity is not none -%}
previous_records as (
    select grouped_records.identity_group, previous.customer_id as previous_customer_id
    from grouped_records
    inner join {{ previous_identity }} as previous
        on grouped_records.source_system = previous.source_system
        and grouped_records.source_table = previous.source_table
        and grouped_records.source_key = previous.source_key
),

previous_keys_by_group as (
    select identity_group, previous_customer_id, count(*) as records
    from previous_records
    group by identity_group, previous_customer_id
),

-- A previous key stays with the group holding most of its records (ties: the smallest group).
key_holders as (
    {{ favourite('previous_keys_by_group', ['previous_customer_id'], 'identity_group', weight='records') }}
),

held_keys as (
    select previous_keys_by_group.*
    from previous_keys_by_group
    inner join key_holders
        on previous_keys_by_group.previous_customer_id = key_holders.previous_customer_id
        and previous_keys_by_group.identity_group = key_holders.favourite_identity_group
),

-- Of the keys a group holds, it keeps the one most of its records had (ties: the smallest key).
kept_keys as (
    {{ favourite('held_keys', ['identity_group'], 'previous_customer_id', weight='records') }}
),

-- A group split from a customer that kept the key: its records' own smallest former key marks it.
split_from as (
    select identity_group, min(previous_customer_id) as previous_customer_id
    from previous_records
    group by identity_group
),

{% endif -%}
keyed_records as (
    select
        cast(grouped_records.source_system as {{ dbt.type_string() }}) as source_system,
        cast(grouped_records.source_table as {{ dbt.type_string() }}) as source_table,
        cast(grouped_records.source_key as {{ dbt.type_string() }}) as source_key,
        {%- if previous_identity is not none %}
        cast(coalesce(
            kept_keys.favourite_previous_customer_id,
            {{ new_customer_key("grouped_records.identity_group || coalesce(' split from ' || split_from.previous_customer_id, '')") }}
        ) as {{ dbt.type_string() }}) as customer_id,
        cast(previous.customer_id as {{ dbt.type_string() }}) as previous_customer_id,
        {%- else %}
        cast({{ new_customer_key('grouped_records.identity_group') }} as {{ dbt.type_string() }}) as customer_id,
        cast(null as {{ dbt.type_string() }}) as previous_customer_id,
        {%- endif %}
        cast(grouped_records.match_method as {{ dbt.type_string() }}) as match_method
        {%- if previous_knows_key_changes %},
        previous.key_changed_at as previous_key_changed_at
        {%- endif %}
    from grouped_records
    {%- if previous_identity is not none %}
    left join kept_keys on grouped_records.identity_group = kept_keys.identity_group
    left join split_from on grouped_records.identity_group = split_from.identity_group
    left join {{ previous_identity }} as previous
        on grouped_records.source_system = previous.source_system
        and grouped_records.source_table = previous.source_table
        and grouped_records.source_key = previous.source_key
    {%- endif %}
),

-- When the record last changed customer (a new record, a merge, a split): the feature models redo
-- the customers whose records moved since they last ran, in whichever later run that is.
resolved as (
    select
        source_system,
        source_table,
        source_key,
        customer_id,
        previous_customer_id,
        match_method,
        {%- if previous_knows_key_changes %}
        case
            when customer_id = previous_customer_id then previous_key_changed_at
            else {{ built_at() }}
        end as key_changed_at
        {%- else %}
        {{ built_at() }} as key_changed_at
        {%- endif %}
    from keyed_records
),

final as (
    select
        resolved.*,
        {{ built_at() }} as _built_at,
        cast('{{ resolution_settings }}' as {{ dbt.type_string() }}) as _resolution_settings
    from resolved
    {%- if only_affected_records %}
    union all
    -- A row that moved on the previous build and that this run does not redo had its key then too:
    -- rewritten with the two keys equal, or the marts that read the moves (kpi_daily_sales'
    -- customers losing orders, customer_key_aliases) would see it move again on every run. A new
    -- record's null stays: every reader skips a null previous key or a key changed before its
    -- own last run, so rewriting all of a first build's rows on the next run bought nothing.
    select
        previous.source_system,
        previous.source_table,
        previous.source_key,
        previous.customer_id,
        previous.customer_id as previous_customer_id,
        previous.match_method,
        previous.key_changed_at,
        {{ built_at() }} as _built_at,
        previous._resolution_settings
    from {{ this }} as previous
    where previous.previous_customer_id <> previous.customer_id
        and not exists (
            select 1 from affected_records
            where affected_records.source_table = previous.source_table
                and affected_records.source_key = previous.source_key
        )
    {%- endif %}
)

select * from final
