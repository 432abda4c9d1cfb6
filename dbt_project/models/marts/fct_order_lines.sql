with order_lines as not materialized (
    select * from {{ ref('stg_sales__order_lines') }}
),

orders as not materialized (
    select * from {{ ref('stg_sales__orders') }}
),

-- Lines of an order (re)delivered in the window are redone too: a line can arrive before its
-- order header, and only joins once the header lands.
lines_to_build as (
    select order_lines.*
    from order_lines
    inner join orders
        on order_lines.order_id = orders.order_id
    {%- if is_incremental() %}
    where {{ in_reprocessing_window('order_lines') }}
        or {{ in_reprocessing_window('orders') }}
    {%- endif %}
),

final as (
    select
        {{ dbt.concat(["cast(order_id as " ~ dbt.type_string() ~ ")", "'-'", "cast(line_number as " ~ dbt.type_string() ~ ")"]) }}
            as order_line_key,
        cast(order_id as bigint) as order_id,
        cast(line_number as integer) as line_number,
        sku,
        cast(quantity as integer) as quantity,
        cast(unit_price as numeric(18, 2)) as unit_price,
        cast(quantity * unit_price as numeric(18, 2)) as gross_amount,
        cast(discount_amount as numeric(18, 2)) as discount_amount,
        cast(quantity * unit_price - discount_amount as numeric(18, 2)) as net_amount,
        is_valid,
        invalid_reason,
        _delivery_date
    from lines_to_build
)

select final.*, {{ built_at() }} as _built_at from final
