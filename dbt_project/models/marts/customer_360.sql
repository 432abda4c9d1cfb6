{#- Incremental: a run computes again the customers changed_customers names (every change it
    finds, labels-only orders included) and those whose orders cross between the previous run's
    reference date and this one's (an order dated ahead of its delivery, or a rerun for an earlier
    day); every other customer keeps the purchase, service and CRM figures built before, and only
    what runs to the reference date (recency, tenure) and the cheap whole-table parts (signup,
    referrals) are computed again. Every row is written again, stamped with this run's _built_at:
    the rows of customers no longer known are those left older (the post-hook removes them). At
    100,000 customers the whole rebuild aggregated every order line daily. -#}
-- depends_on: {{ ref('changed_customers') }}
with customers as {{ cte_not_materialized() }} (
    select * from {{ ref('dim_customers') }}
),

all_orders as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_orders') }}
),

order_lines as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_order_lines') }}
),

products as {{ cte_not_materialized() }} (
    select * from {{ ref('dim_products') }}
),

-- Recency and tenure are counted to the run's as-of date (macro as_of_date_sql: the day the DAG
-- runs for), so that on a daily run this mart and customer_features agree, but never past the
-- latest plausible order date the warehouse holds: by hand, with the default far-future as-of
-- date, that is the day the data describes (a typed year 9999 describes no day). Orders placed
-- after the reference date (a rerun for a past day, a future date typed within the plausible
-- range) do not count, as the features do not count them on their as-of date.
reference as (
    select
        least(
            {{ as_of_date_sql() }},
            max(case when {{ is_plausible_date('order_date') }} then order_date end)
        ) as reference_date
    from all_orders
),

{% if builds_on_this() -%}
recomputed_customers as (
    select customer_id from {{ ref('changed_customers') }}
    union
    select all_orders.customer_id
    from all_orders
    cross join reference
    cross join (select max(reference_date) as reference_date from {{ this }}) as previous
    where all_orders.order_date > least(previous.reference_date, reference.reference_date)
        and all_orders.order_date <= greatest(previous.reference_date, reference.reference_date)
    union
    select customer_id from customers
    where not exists (select 1 from {{ this }} as held where held.customer_id = customers.customer_id)
),
{%- endif %}

{%- set of_recomputed_customers -%}
    {%- if builds_on_this() %}
    where customer_id in (select customer_id from recomputed_customers)
    {%- endif %}
{%- endset %}

orders as {{ cte_not_materialized() }} (
    select * from all_orders {{ of_recomputed_customers }}
),

tickets as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_tickets') }} {{ of_recomputed_customers }}
),

interactions as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_interactions') }} {{ of_recomputed_customers }}
),

campaign_responses as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_campaign_responses') }} {{ of_recomputed_customers }}
),

placed_orders as (
    select
        orders.*,
        reference.reference_date
    from orders
    cross join reference
    where orders.order_date <= reference.reference_date
),

-- Recency, frequency, monetary and favourite category as the features define them (macros/customer_rfm.sql).
order_summary as (
    select
        customer_id,
        count(*) as orders_placed,
        {{ rfm_measures('reference_date') }},
        sum(case when order_status = 'returned' then 1 else 0 end) as returned_orders,
        sum(case when order_status = 'returned' then net_amount else 0 end) as returned_amount
    from placed_orders
    group by customer_id, reference_date
),

category_spend as (
    {{ revenue_category_spend('placed_orders', 'order_lines', 'products', ['customer_id']) }}
),

favourite_categories as (
    {{ category_summary('category_spend', ['customer_id']) }}
),

revenue_orders as (
    select * from placed_orders
    where is_revenue
),

favourite_channels as (
    {{ favourite('revenue_orders', ['customer_id'], 'channel') }}
),

ticket_summary as (
    select
        customer_id,
        count(*) as ticket_count,
        sum(case when is_open then 1 else 0 end) as open_ticket_count,
        avg(satisfaction_rating) as average_satisfaction
    from tickets
    group by customer_id
),

interaction_summary as (
    select
        customer_id,
        count(*) as interaction_count
    from interactions
    group by customer_id
),

campaign_summary as (
    select
        customer_id,
        sum(case when was_sent then 1 else 0 end) as campaigns_received,
        sum(case when was_sent and has_responded then 1 else 0 end) as campaign_responses
    from campaign_responses
    group by customer_id
),

-- What a customer's row keeps from one run to the next: the figures of their orders placed by the
-- reference date, tickets, interactions and campaigns.
activity as (
    select
        customers.customer_id,
        order_summary.first_revenue_order_date as first_order_date,
        order_summary.last_revenue_order_date as last_order_date,
        cast(coalesce(order_summary.frequency, 0) as integer) as frequency,
        cast(coalesce(order_summary.monetary, 0) as numeric(18, 2)) as monetary,
        cast(coalesce(order_summary.orders_placed, 0) as integer) as orders_placed,
        cast(coalesce(order_summary.returned_orders, 0) as integer) as returned_orders,
        cast(coalesce(order_summary.returned_amount, 0) as numeric(18, 2)) as returned_amount,
        favourite_categories.favourite_category,
        favourite_channels.favourite_channel,
        cast(coalesce(ticket_summary.ticket_count, 0) as integer) as ticket_count,
        cast(coalesce(ticket_summary.open_ticket_count, 0) as integer) as open_ticket_count,
        cast(ticket_summary.average_satisfaction as {{ type_double() }}) as average_satisfaction,
        cast(coalesce(interaction_summary.interaction_count, 0) as integer) as interaction_count,
        cast(coalesce(campaign_summary.campaigns_received, 0) as integer) as campaigns_received,
        cast(campaign_summary.campaign_responses as {{ type_double() }}) / nullif(campaign_summary.campaigns_received, 0)
            as campaign_response_rate
    from customers
    left join order_summary
        on customers.customer_id = order_summary.customer_id
    left join favourite_categories
        on customers.customer_id = favourite_categories.customer_id
    left join favourite_channels
        on customers.customer_id = favourite_channels.customer_id
    left join ticket_summary
        on customers.customer_id = ticket_summary.customer_id
    left join interaction_summary
        on customers.customer_id = interaction_summary.customer_id
    left join campaign_summary
        on customers.customer_id = campaign_summary.customer_id
    {%- if builds_on_this() %}
    where customers.customer_id in (select customer_id from recomputed_customers)
    union all
    select
        customer_id, first_order_date, last_order_date, frequency, monetary, orders_placed, returned_orders,
        returned_amount, favourite_category, favourite_channel, ticket_count, open_ticket_count,
        average_satisfaction, interaction_count, campaigns_received, campaign_response_rate
    from {{ this }} as held
    where not exists (select 1 from recomputed_customers where recomputed_customers.customer_id = held.customer_id)
    {%- endif %}
),

referrals as (
    select
        referred_by_customer_id as customer_id,
        count(*) as referrals_made
    from customers
    where referred_by_customer_id <> customer_id
    group by referred_by_customer_id
),

final as (
    select
        customers.customer_id,
        reference.reference_date,
        customers.signup_date,
        cast({{ dbt.datediff('coalesce(customers.signup_date, activity.first_order_date)', 'reference.reference_date', 'day') }} as integer)
            as tenure_days,
        activity.first_order_date,
        activity.last_order_date,
        {{ recency_days('activity.last_order_date', 'reference.reference_date') }} as recency_days,
        activity.frequency,
        activity.monetary,
        -- A ratio in double precision: a decimal quotient rounds differently on the two engines.
        cast(activity.monetary as {{ type_double() }}) / nullif(activity.frequency, 0) as average_order_value,
        activity.orders_placed,
        activity.returned_orders,
        activity.returned_amount,
        activity.favourite_category,
        activity.favourite_channel,
        activity.ticket_count,
        activity.open_ticket_count,
        activity.average_satisfaction,
        activity.interaction_count,
        activity.campaigns_received,
        activity.campaign_response_rate,
        cast(coalesce(referrals.referrals_made, 0) as integer) as referrals_made,
        {{ built_at() }} as _built_at
    from customers
    cross join reference
    inner join activity
        on customers.customer_id = activity.customer_id
    left join referrals
        on customers.customer_id = referrals.customer_id
)

select * from final
