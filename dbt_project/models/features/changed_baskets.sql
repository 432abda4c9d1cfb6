{#- The baskets whose rows in basket_items may differ from what it holds: basket_items rewrites
    exactly these (and drops those of them that are no longer baskets) instead of two years of
    baskets every day. One row per order, with the first reason found.

    basket_items holds each revenue order known on the as-of date of the build that wrote it, with
    its valid lines and their products' categories. Since its last build, an order changes there
    when orders_as_known or fct_order_lines (staging's lines) rewrote it (a new status, a line, a move to another
    customer), when a version of it or of a line was loaded (a deletion leaves no row to rewrite),
    when a product it holds was loaded again (a new category), and when the as-of date moved past
    the start or end of one of its spans (an order placed or superseded between the two dates, in
    either direction: a rerun of an earlier date takes back what later days added). Read without
    ref(): this model runs before basket_items and reads what it held before this run. On a first
    build, every order and every basket held; so too for a table an earlier version built (both
    item levels, no sku column). -#}
{%- set as_of_date = as_of_date_sql() %}
{%- set built = none %}
{%- set held = none %}
{%- if execute %}
    {%- set held = adapter.get_relation(this.database, this.schema, 'basket_items') %}
    {%- if held is not none and has_column(held, '_built_at') and has_column(held, '_built_as_of') and has_column(held, 'sku') %}
        {%- set built = held %}
    {%- endif %}
{%- endif %}
{#- While parsing (no execute) the whole SQL renders, so dbt sees every ref. #}
{%- set first_build = execute and built is none %}

with orders as {{ cte_not_materialized() }} (
    select * from {{ ref('orders_as_known') }}
),

order_lines as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_order_lines') }}
),

{% if first_build -%}
changes as (
    select order_id, 'first build of basket_items' as reason
    from orders
    {%- if held is not none %}
    union all
    select basket_id, 'first build of basket_items'
    from {{ held }}
    {%- endif %}
),
{%- else -%}
{%- set basket_items_built_at = newest_built_at(built) %}
last_build as (
    select max(_built_as_of) as as_of_date
    from {{ built }}
),

-- The two as-of dates, earlier first: an order's span starting or ending after the earlier and
-- by the later one is known on one of them only.
moved_dates as (
    select
        least(as_of_date, {{ as_of_date }}) as earlier_date,
        greatest(as_of_date, {{ as_of_date }}) as later_date
    from last_build
),

changes as (
    select order_id, 'order rewritten' as reason
    from orders
    where _built_at > {{ basket_items_built_at }}
    union all
    select order_id, 'known on one of the two as-of dates only'
    from orders
    cross join moved_dates
    where (orders.known_from > moved_dates.earlier_date and orders.known_from <= moved_dates.later_date)
        or (orders.known_until > moved_dates.earlier_date and orders.known_until <= moved_dates.later_date)
    union all
    select order_id, 'line rewritten'
    from order_lines
    where _built_at > {{ basket_items_built_at }}
    union all
    select order_id, 'order version loaded'
    from {{ ref('stg_sales__order_versions') }}
    where _loaded_at > {{ basket_items_built_at }}
    union all
    select order_id, 'line version loaded'
    from {{ ref('stg_sales__order_line_versions') }}
    where _loaded_at > {{ basket_items_built_at }}
    union all
    select order_lines.order_id, 'product loaded'
    from {{ ref('stg_sales__products') }} as products
    inner join order_lines on products.sku = order_lines.sku
    where products._loaded_at > {{ basket_items_built_at }}
),
{%- endif %}

final as (
    select order_id as basket_id, cast(min(reason) as {{ dbt.type_string() }}) as reason
    from changes
    group by order_id
)

select * from final
