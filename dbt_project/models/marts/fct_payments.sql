with payments as not materialized (
    select * from {{ ref('stg_sales__payments') }}
),

{% if is_incremental() -%}
-- Redone when delivered in the window, or when its flags changed without a delivery of its own:
-- an orphan payment's order arriving after the window clears its orphan_payment flag.
payments_to_build as (
    select payment_id from payments where {{ in_reprocessing_window() }}
    union
    {{ keys_with_stale_flags('payment_id', 'payments') }}
),

{% endif -%}
final as (
    select
        payment_id,
        cast(order_id as bigint) as order_id,
        payment_method,
        cast(amount as numeric(18, 2)) as amount,
        is_refund,
        paid_at,
        cast(paid_at as date) as paid_date,
        is_valid,
        invalid_reason,
        _delivery_date
    from payments
    {%- if is_incremental() %}
    where payment_id in (select payment_id from payments_to_build)
    {%- endif %}
)

select final.*, {{ built_at() }} as _built_at from final
