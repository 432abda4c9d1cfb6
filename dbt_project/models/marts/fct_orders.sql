-- depends_on: {{ ref('stg_sales__order_line_versions') }}
with orders as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_sales__orders') }}
),

order_lines as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_order_lines') }}
),

identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

{% if is_incremental() -%}
-- A line hard-deleted in the source arrives as a tombstone, which staging and so fct_order_lines
-- leave out: no line in the window names its order when the header is not redelivered. The
-- tombstone itself does, loaded since this table was built (a recount of every order's lines,
-- which caught it before, read all 7M lines daily at 100,000 customers).
orders_with_deleted_lines as (
    select order_id
    from {{ ref('stg_sales__order_line_versions') }}
    where _is_deleted and {{ changed_since_this_was_built('_loaded_at') }}
),

-- An order is redone when its header or one of its lines was delivered in the window, when one
-- of its lines was deleted, or when identity resolution moved it to another customer.
orders_to_build as (
    select order_id from orders where {{ in_reprocessing_window() }}
    union
    select order_id from order_lines where {{ in_reprocessing_window(loaded_at='_built_at') }}
    union
    select order_id from orders_with_deleted_lines
    union
    {{ keys_with_stale_customer('order_id', 'identity', 'orders') }}
),

{% endif -%}
-- Invalid lines (a quantity or price that is not positive) are kept in fct_order_lines with their
-- reason but count in no amount: their values are not what the customer bought.
line_totals as (
    select
        order_id,
        count(*) as line_count,
        sum(case when not is_valid then 1 else 0 end) as invalid_line_count,
        sum(case when is_valid then quantity else 0 end) as item_count,
        sum(case when is_valid then gross_amount else 0 end) as gross_amount,
        sum(case when is_valid then discount_amount else 0 end) as discount_amount,
        max(_delivery_date) as last_line_delivery_date
    from order_lines
    {%- if is_incremental() %}
    where order_id in (select order_id from orders_to_build)
    {%- endif %}
    group by order_id
),

final as (
    select
        orders.order_id,
        identity.customer_id,
        orders.customer_email,
        orders.crm_id,
        orders.channel,
        orders.store_id,
        orders.order_status,
        orders.ordered_at,
        cast(orders.ordered_at as date) as order_date,
        cast(coalesce(line_totals.line_count, 0) as integer) as line_count,
        cast(coalesce(line_totals.invalid_line_count, 0) as integer) as invalid_line_count,
        cast(coalesce(line_totals.item_count, 0) as integer) as item_count,
        cast(coalesce(line_totals.gross_amount, 0) as numeric(18, 2)) as gross_amount,
        cast(coalesce(line_totals.discount_amount, 0) as numeric(18, 2)) as discount_amount,
        cast(coalesce(line_totals.gross_amount, 0) - coalesce(line_totals.discount_amount, 0) as numeric(18, 2))
            as net_amount,
        -- An order under a non-positive id or placed on an implausible day (flagged in staging) is
        -- a broken record, not a sale: no revenue figure counts it.
        orders.order_status not in ('cancelled', 'returned')
            and orders.order_id > 0
            and coalesce({{ is_plausible_date('orders.ordered_at') }}, true) as is_revenue,
        case
            when line_totals.last_line_delivery_date > orders._delivery_date then line_totals.last_line_delivery_date
            else orders._delivery_date
        end as _delivery_date
    from orders
    left join line_totals
        on orders.order_id = line_totals.order_id
    left join identity
        on identity.source_table = 'orders'
        and identity.source_key = cast(orders.order_id as {{ dbt.type_string() }})
    {%- if is_incremental() %}
    where orders.order_id in (select order_id from orders_to_build)
    {%- endif %}
)

select final.*, {{ built_at() }} as _built_at from final
