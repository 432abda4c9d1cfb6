-- Customer features on every feature date (the run's as-of date and each training snapshot), each
-- date seeing only what the warehouse knew then: orders and tickets as known on that date,
-- interactions and campaign results delivered by then. The one place features are computed:
-- customer_features and training_set both read it. Incremental: see macros/incremental_features.sql.
-- depends_on: {{ ref('changed_customers') }}
with feature_dates as (
    select as_of_date from {{ ref('feature_dates') }}
),

{{ feature_work_ctes('feature_dates') }}

-- On a full build joined to the dates again by each reader: materialised once, PostgreSQL wrote
-- the 21M date and order rows (100,000 customers, 25 dates) to disk and read them back twice. An
-- incremental build's few (a new date, the changed customers' history) are kept once for four readers.
orders as {% if not builds_on_this() %}{{ cte_not_materialized() }} {% endif %}(
    {{ known_in_feature_work(ref('orders_as_known')) }}
),

tickets as {{ cte_not_materialized() }} (
    {{ known_in_feature_work(ref('tickets_as_known')) }}
),

order_lines as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_order_lines') }}
),

products as {{ cte_not_materialized() }} (
    select * from {{ ref('dim_products') }}
),

crm_versions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__customer_versions') }}
),

interactions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__interactions') }}
),

campaign_members as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__campaign_members') }}
),

identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

crm_customers as (
    select source_key as crm_id, customer_id
    from identity
    where source_table = 'customers'
        and {{ feature_batch_condition('customer_id') }}
),

-- CRM contacts known on each date, with the earliest signup date their versions known then give.
known_contacts as (
    select
        as_of_date,
        customer_id,
        min(signup_date) as signup_date
    from ({{ crm_records_in_feature_work('crm_versions', ['signup_date'], ['crm_versions._delivery_date']) }}) as known_versions
    group by 1, 2
),

-- The CRM contact versions current on each date (the latest by the CRM's modification time among
-- those delivered by then); a customer with several CRM ids has one per id.
current_contact_versions as (
    {{ current_crm_contacts('feature_dates', 'crm_versions', ['is_marketing_opt_in']) }}
),

-- Opted in when any of the customer's current contacts is; null when none of them says.
contact_consent as (
    select
        current_contact_versions.as_of_date,
        crm_customers.customer_id,
        max(cast(current_contact_versions.is_marketing_opt_in as integer)) as marketing_opt_in
    from current_contact_versions
    inner join crm_customers
        on current_contact_versions.crm_id = crm_customers.crm_id
    {{- feature_work_joins('current_contact_versions.as_of_date', 'crm_customers.customer_id') }}
    where {{ in_feature_work() }}
    group by 1, 2
),

order_features as (
    select
        as_of_date,
        customer_id,
        count(*) as order_count,
        {{ rfm_measures('as_of_date') }},
        sum(case when is_revenue and channel = 'web' then 1 else 0 end) as web_orders,
        sum(case when is_revenue and channel = 'store' then 1 else 0 end) as store_orders,
        sum(case when is_revenue and channel = 'phone' then 1 else 0 end) as phone_orders,
        sum(case when order_status = 'returned' then 1 else 0 end) as returned_orders,
        sum(case when order_status = 'cancelled' then 1 else 0 end) as cancelled_orders,
        sum(case when is_revenue and order_date > {{ dbt.dateadd('day', -30, 'as_of_date') }} then 1 else 0 end)
            as frequency_last_30_days,
        sum(case when is_revenue and order_date > {{ dbt.dateadd('day', -90, 'as_of_date') }} then 1 else 0 end)
            as frequency_last_90_days,
        sum(case when is_revenue and order_date > {{ dbt.dateadd('day', -90, 'as_of_date') }} then net_amount else 0 end)
            as monetary_last_90_days,
        min(order_date) as first_order_date
    from orders
    group by 1, 2
),

revenue_orders as (
    select * from orders
    where is_revenue
),

favourite_channels as (
    {{ favourite('revenue_orders', ['as_of_date', 'customer_id'], 'channel') }}
),

-- Spend per category known on each date, as the orders known then give it. A full build reads it
-- off running totals over every customer's history (all dates at once); an incremental build sums
-- the lines of the orders it reads, since the running totals cost each day what a full build costs
-- (the feature snapshots of a steady day at 100,000 customers took 19.7 s on DuckDB that way).
{%- if builds_on_this() %}
-- Each date built for everyone with the latest date held before it, whose rows are still there
-- (the previous as-of date leaves in a post-hook, after the insert).
previous_dates as (
    select
        dates_to_build.as_of_date,
        (select max(held.as_of_date) from {{ this }} as held where held.as_of_date < dates_to_build.as_of_date)
            as previous_date
    from dates_to_build
),

-- Customers whose known orders differ between the two dates: an order span (a version with its
-- status, see orders_as_known) starting or ending after the earlier date and by the later one.
customers_with_orders_moved as (
    select previous_dates.as_of_date, spans.customer_id
    from previous_dates
    inner join {{ ref('orders_as_known') }} as spans
        on spans.known_from > previous_dates.previous_date
        and spans.known_from <= previous_dates.as_of_date
    union
    select previous_dates.as_of_date, spans.customer_id
    from previous_dates
    inner join {{ ref('orders_as_known') }} as spans
        on spans.known_until > previous_dates.previous_date
        and spans.known_until <= previous_dates.as_of_date
),

-- Category figures read only the orders known on a date, their current lines and the products'
-- current categories. A customer with the same orders known on both dates and no change since the
-- earlier date was written (changed_customers: lines, products, identity) has the same figures:
-- summing them again was most of a steady day's cost of this model (every line of the history).
carried_category_features as (
    select
        previous_dates.as_of_date,
        held.customer_id,
        held.favourite_category,
        held.favourite_category_share,
        held.distinct_categories,
        held.discount_share,
        held.items_per_order
    from previous_dates
    inner join {{ this }} as held
        on held.as_of_date = previous_dates.previous_date
    left join {{ ref('changed_customers') }} as changed_feature_customers
        on held.customer_id = changed_feature_customers.customer_id
        and changed_feature_customers.features_changed
    left join customers_with_orders_moved
        on previous_dates.as_of_date = customers_with_orders_moved.as_of_date
        and held.customer_id = customers_with_orders_moved.customer_id
    where changed_feature_customers.customer_id is null
        and customers_with_orders_moved.customer_id is null
),

orders_without_carried_categories as (
    select orders.*
    from orders
    left join carried_category_features as carried
        on orders.as_of_date = carried.as_of_date
        and orders.customer_id = carried.customer_id
    where carried.customer_id is null
),

-- A date built for everyone sums only the customers whose category figures may differ from the
-- latest date held before it: the rest are carried from that date (above).
category_spend as (
    {{ revenue_category_spend('orders_without_carried_categories', 'order_lines', 'products', ['as_of_date', 'customer_id']) }}
),
{%- else %}
-- A full build: the spans of the statement's batch of customers, already cut to it by their orders.
category_spend as (
    {{ spans_known_on('feature_dates', '(' ~ revenue_category_spend_spans(feature_batch_rows(ref('orders_as_known')), 'order_lines', 'products') ~ ')') }}
),
{%- endif %}

category_mix as (
    {{ category_summary('category_spend', ['as_of_date', 'customer_id']) }}
),

-- Items per order divides by the revenue orders, which count no order without valid lines: a
-- customer with revenue orders and no category has 0 (in the final select).
category_features as (
    select
        category_mix.as_of_date,
        category_mix.customer_id,
        category_mix.favourite_category,
        cast(category_mix.favourite_category_share as {{ type_double() }}) as favourite_category_share,
        category_mix.distinct_categories,
        cast(case when category_mix.gross_amount > 0
            then {{ decimal_ratio('category_mix.discount_amount', 'category_mix.gross_amount') }}
        end as {{ type_double() }}) as discount_share,
        cast(case when order_features.frequency > 0
            then 1.0 * category_mix.units / order_features.frequency
        end as {{ type_double() }}) as items_per_order
    from category_mix
    left join order_features
        on category_mix.as_of_date = order_features.as_of_date
        and category_mix.customer_id = order_features.customer_id
    {%- if builds_on_this() %}
    union all
    select * from carried_category_features
    {%- endif %}
),

-- A first reply is slow once it came after its SLA target, or once the target passed with no reply
-- by the end of the date; a ticket open for over a week counts as unresolved.
ticket_features as (
    select
        as_of_date,
        customer_id,
        count(*) as tickets_opened,
        sum(case when created_at >= {{ dbt.dateadd('day', -89, 'as_of_date') }} then 1 else 0 end)
            as tickets_opened_last_90_days,
        sum(case when is_open then 1 else 0 end) as open_tickets,
        sum(case when is_open and created_at < {{ dbt.dateadd('day', -6, 'as_of_date') }} then 1 else 0 end)
            as unresolved_tickets,
        sum(case
            when first_reply_at > first_reply_due_at then 1
            when first_reply_at is null and first_reply_due_at < {{ dbt.dateadd('day', 1, 'as_of_date') }} then 1
            else 0
        end) as slow_reply_tickets,
        count(satisfaction_rating) as rated_tickets,
        avg(satisfaction_rating) as average_satisfaction,
        sum(case when satisfaction_rating <= 2 then 1 else 0 end) as dissatisfied_tickets,
        max(cast(created_at as date)) as last_ticket_date
    from tickets
    group by 1, 2
),

interaction_features as (
    select
        as_of_date,
        customer_id,
        count(*) as interactions,
        sum(case when occurred_at >= {{ dbt.dateadd('day', -89, 'as_of_date') }} then 1 else 0 end)
            as interactions_last_90_days,
        sum(case when outcome = 'complaint' then 1 else 0 end) as complaint_interactions
    from ({{ crm_records_in_feature_work(
        'interactions', ['occurred_at', 'outcome'],
        ['interactions._delivery_date', 'cast(interactions.occurred_at as date)']) }}) as known_interactions
    group by 1, 2
),

-- Members are delivered when their campaign ends, with its outcome: only ended campaigns count.
campaign_features as (
    select
        as_of_date,
        customer_id,
        sum(case when sent then 1 else 0 end) as campaigns_received,
        sum(case when sent and converted then 1 else 0 end) as campaign_conversions
    from ({{ crm_records_in_feature_work(
        'campaign_members', ['sent', 'converted'], ['campaign_members._delivery_date']) }}) as known_members
    group by 1, 2
),

-- Everyone known on the date (a CRM contact, a buyer or a ticket requester), first seen at the
-- earliest of their signup, first order and first ticket.
first_seen as (
    select as_of_date, customer_id, signup_date as seen_date from known_contacts
    union all
    select as_of_date, customer_id, first_order_date from order_features
    union all
    select as_of_date, customer_id, cast(created_at as date) from tickets
),

known_customers as (
    select
        as_of_date,
        customer_id,
        min(seen_date) as first_seen_date
    from first_seen
    group by 1, 2
),

final as (
    select
        known_customers.customer_id,
        known_customers.as_of_date,
        known_customers.first_seen_date,
        cast({{ dbt.datediff('known_customers.first_seen_date', 'known_customers.as_of_date', 'day') }} as integer)
            as tenure_days,
        known_contacts.signup_date is not null as is_crm_contact,
        cast(coalesce(order_features.order_count, 0) as integer) as order_count,
        cast(coalesce(order_features.frequency, 0) as integer) as frequency,
        cast(coalesce(order_features.monetary, 0) as numeric(18, 2)) as monetary,
        -- A double, unrounded (as in customer_360): rounded to cents, a quotient ending in a half cent
        -- rounded up on PostgreSQL (exact numeric division) and down on DuckDB (division in double).
        cast(order_features.monetary as {{ type_double() }}) / nullif(order_features.frequency, 0) as average_order_value,
        order_features.recency_days,
        order_features.first_revenue_order_date as first_order_date,
        order_features.last_revenue_order_date as last_order_date,
        cast(coalesce(order_features.frequency_last_30_days, 0) as integer) as frequency_last_30_days,
        cast(coalesce(order_features.frequency_last_90_days, 0) as integer) as frequency_last_90_days,
        cast(coalesce(order_features.monetary_last_90_days, 0) as numeric(18, 2)) as monetary_last_90_days,
        cast(coalesce(order_features.returned_orders, 0) as integer) as returned_orders,
        cast(coalesce(order_features.cancelled_orders, 0) as integer) as cancelled_orders,
        cast(case when order_features.order_count > 0
            then 1.0 * order_features.returned_orders / order_features.order_count
        end as {{ type_double() }}) as return_rate,
        favourite_channels.favourite_channel,
        category_features.favourite_category,
        category_features.favourite_category_share,
        cast(coalesce(category_features.distinct_categories, 0) as integer) as distinct_categories,
        category_features.discount_share,
        cast(case when order_features.frequency > 0
            then coalesce(category_features.items_per_order, 0)
        end as {{ type_double() }}) as items_per_order,
        cast(case when order_features.frequency > 0
            then 1.0 * order_features.web_orders / order_features.frequency
        end as {{ type_double() }}) as web_share,
        cast(case when order_features.frequency > 0
            then 1.0 * order_features.store_orders / order_features.frequency
        end as {{ type_double() }}) as store_share,
        cast(case when order_features.frequency > 0
            then 1.0 * order_features.phone_orders / order_features.frequency
        end as {{ type_double() }}) as phone_share,
        cast(contact_consent.marketing_opt_in = 1 as boolean) as marketing_opt_in,
        cast(coalesce(ticket_features.tickets_opened, 0) as integer) as tickets_opened,
        cast(coalesce(ticket_features.tickets_opened_last_90_days, 0) as integer) as tickets_opened_last_90_days,
        cast(coalesce(ticket_features.open_tickets, 0) as integer) as open_tickets,
        cast(coalesce(ticket_features.unresolved_tickets, 0) as integer) as unresolved_tickets,
        cast(coalesce(ticket_features.slow_reply_tickets, 0) as integer) as slow_reply_tickets,
        cast(coalesce(ticket_features.rated_tickets, 0) as integer) as rated_tickets,
        cast(ticket_features.average_satisfaction as {{ type_double() }}) as average_satisfaction,
        cast(coalesce(ticket_features.dissatisfied_tickets, 0) as integer) as dissatisfied_tickets,
        cast({{ dbt.datediff('ticket_features.last_ticket_date', 'known_customers.as_of_date', 'day') }} as integer)
            as days_since_last_ticket,
        cast(coalesce(interaction_features.interactions, 0) as integer) as interactions,
        cast(coalesce(interaction_features.interactions_last_90_days, 0) as integer) as interactions_last_90_days,
        cast(coalesce(interaction_features.complaint_interactions, 0) as integer) as complaint_interactions,
        cast(coalesce(campaign_features.campaigns_received, 0) as integer) as campaigns_received,
        cast(coalesce(campaign_features.campaign_conversions, 0) as integer) as campaign_conversions,
        cast(case when campaign_features.campaigns_received > 0
            then 1.0 * campaign_features.campaign_conversions / campaign_features.campaigns_received
        end as {{ type_double() }}) as campaign_response_rate,
        {{ built_at() }} as _built_at
    from known_customers
    left join known_contacts
        on known_customers.as_of_date = known_contacts.as_of_date
        and known_customers.customer_id = known_contacts.customer_id
    left join contact_consent
        on known_customers.as_of_date = contact_consent.as_of_date
        and known_customers.customer_id = contact_consent.customer_id
    left join order_features
        on known_customers.as_of_date = order_features.as_of_date
        and known_customers.customer_id = order_features.customer_id
    left join favourite_channels
        on known_customers.as_of_date = favourite_channels.as_of_date
        and known_customers.customer_id = favourite_channels.customer_id
    left join category_features
        on known_customers.as_of_date = category_features.as_of_date
        and known_customers.customer_id = category_features.customer_id
    left join ticket_features
        on known_customers.as_of_date = ticket_features.as_of_date
        and known_customers.customer_id = ticket_features.customer_id
    left join interaction_features
        on known_customers.as_of_date = interaction_features.as_of_date
        and known_customers.customer_id = interaction_features.customer_id
    left join campaign_features
        on known_customers.as_of_date = campaign_features.as_of_date
        and known_customers.customer_id = campaign_features.customer_id
)

select * from final
