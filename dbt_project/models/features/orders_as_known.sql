-- Every order as it was known on each feature date: the last version of its header the warehouse
-- had by then (so an order delivered late is unknown until it arrives, and a later cancellation
-- or return does not show; the first delivery's history is replayed from the status log, below),
-- with its status then, from every version staging has of it (raw keeps each one with its
-- delivery date; stg_sales__orders keeps only the latest). Amounts, channel and
-- customer come from fct_orders: the shop never changes an order's lines, only its status. An
-- order hard-deleted later is absent from fct_orders and so from every date: deletions in the
-- sales system remove test orders, which were never sales.
--
-- Incremental: a run adds the feature dates not built yet (every order known then) and redoes
-- every date of the orders written or delivered since the last run (a new status, a line, a move
-- to another customer, a late version); an order deleted since, or a date that is no longer a
-- feature date, leaves (post-hooks).
with feature_dates as (
    select as_of_date from {{ ref('feature_dates') }}
),

header_versions as not materialized (
    select * from {{ ref('stg_sales__order_versions') }}
),

orders as not materialized (
    select * from {{ ref('fct_orders') }}
),

status_history as not materialized (
    select * from {{ ref('stg_sales__order_status_history') }}
),

-- The sales database is read by its change time: a daily run delivers each day's changes that
-- day. The history a new install loads in its first delivery (years of orders at once, each in
-- its final state) is replayed from the shop's status log instead: each status an order took
-- before that delivery is a version known from the day it was entered, as daily runs would have
-- delivered it. Without that, every training snapshot before the install would know no order
-- (or would know today's returns), and models could not train for months. Anything delivered
-- later is known from its delivery: a late order is unknown until it arrives.
first_delivery as (
    select min(_delivery_date) as first_delivery_date from header_versions
),

delivered_versions as (
    select
        header_versions.order_id,
        header_versions.order_status,
        header_versions.updated_at,
        header_versions._is_deleted as is_deleted,
        -- The first delivery's final states: known from their last change (before that, the log's).
        case
            when header_versions._delivery_date = first_delivery.first_delivery_date
                then least(header_versions._delivery_date, cast(header_versions.updated_at as date))
            else header_versions._delivery_date
        end as known_from,
        header_versions._loaded_at,
        header_versions._delivery_date = first_delivery.first_delivery_date as is_first_delivery
    from header_versions
    cross join first_delivery
),

replayed_versions as (
    select
        delivered_versions.order_id,
        status_history.order_status,
        status_history.changed_at as updated_at,
        false as is_deleted,
        cast(status_history.changed_at as date) as known_from,
        delivered_versions._loaded_at
    from delivered_versions
    inner join status_history
        on delivered_versions.order_id = status_history.order_id
    where delivered_versions.is_first_delivery
        and cast(status_history.changed_at as date) < delivered_versions.known_from
),

versions as (
    select order_id, order_status, updated_at, is_deleted, known_from, _loaded_at from delivered_versions
    union all
    select order_id, order_status, updated_at, is_deleted, known_from, _loaded_at from replayed_versions
),

{% set oldest_first = ['updated_at', 'is_deleted', 'known_from', '_loaded_at'] -%}
{#- A table built before it was incremental has no _built_at: redone whole once. #}
{% if builds_on_this() and has_column(this, '_built_at') -%}
last_built as (
    select max(_built_at) as built_at from {{ this }}
),

built_dates as (
    select as_of_date from feature_dates
    where as_of_date in (select as_of_date from {{ this }})
),

dates_to_build as (
    select as_of_date from feature_dates
    where as_of_date not in (select as_of_date from built_dates)
),

orders_to_build as (
    select order_id from orders where _built_at > (select built_at from last_built)
    union
    select order_id from header_versions where _loaded_at > (select built_at from last_built)
    union
    select order_id from status_history where _loaded_at > (select built_at from last_built)
),

versions_of_orders_to_build as (
    select * from versions
    where order_id in (select order_id from orders_to_build)
),

known_versions as (
    {{ versions_known_on('dates_to_build', 'versions', ['order_id'], oldest_first) }}
    union all
    {{ versions_known_on('built_dates', 'versions_of_orders_to_build', ['order_id'], oldest_first) }}
),
{%- else -%}
known_versions as (
    {{ versions_known_on('feature_dates', 'versions', ['order_id'], oldest_first) }}
),
{%- endif %}

final as (
    select
        known_versions.as_of_date,
        orders.order_id,
        orders.customer_id,
        orders.channel,
        orders.order_date,
        orders.net_amount,
        known_versions.order_status,
        known_versions.order_status not in ('cancelled', 'returned') as is_revenue,
        {{ built_at() }} as _built_at
    from known_versions
    inner join orders
        on known_versions.order_id = orders.order_id
    where orders.order_date <= known_versions.as_of_date
)

select * from final
