with customers as not materialized (
    select * from {{ ref('dim_customers') }}
),

orders as not materialized (
    select * from {{ ref('fct_orders') }}
),

order_lines as not materialized (
    select * from {{ ref('fct_order_lines') }}
),

products as not materialized (
    select * from {{ ref('dim_products') }}
),

tickets as not materialized (
    select * from {{ ref('fct_tickets') }}
),

interactions as not materialized (
    select * from {{ ref('fct_interactions') }}
),

campaign_responses as not materialized (
    select * from {{ ref('fct_campaign_responses') }}
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
    from orders
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
        cast({{ dbt.datediff('coalesce(customers.signup_date, order_summary.first_revenue_order_date)', 'reference.reference_date', 'day') }} as integer)
            as tenure_days,
        order_summary.first_revenue_order_date as first_order_date,
        order_summary.last_revenue_order_date as last_order_date,
        order_summary.recency_days,
        cast(coalesce(order_summary.frequency, 0) as integer) as frequency,
        cast(coalesce(order_summary.monetary, 0) as numeric(18, 2)) as monetary,
        -- A ratio in double precision: a decimal quotient rounds differently on the two engines.
        cast(order_summary.monetary as double precision) / nullif(order_summary.frequency, 0) as average_order_value,
        cast(coalesce(order_summary.orders_placed, 0) as integer) as orders_placed,
        cast(coalesce(order_summary.returned_orders, 0) as integer) as returned_orders,
        cast(coalesce(order_summary.returned_amount, 0) as numeric(18, 2)) as returned_amount,
        favourite_categories.favourite_category,
        favourite_channels.favourite_channel,
        cast(coalesce(ticket_summary.ticket_count, 0) as integer) as ticket_count,
        cast(coalesce(ticket_summary.open_ticket_count, 0) as integer) as open_ticket_count,
        cast(ticket_summary.average_satisfaction as double precision) as average_satisfaction,
        cast(coalesce(interaction_summary.interaction_count, 0) as integer) as interaction_count,
        cast(coalesce(campaign_summary.campaigns_received, 0) as integer) as campaigns_received,
        cast(campaign_summary.campaign_responses as double precision) / nullif(campaign_summary.campaigns_received, 0)
            as campaign_response_rate,
        cast(coalesce(referrals.referrals_made, 0) as integer) as referrals_made
    from customers
    cross join reference
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
    left join referrals
        on customers.customer_id = referrals.customer_id
)

select * from final
