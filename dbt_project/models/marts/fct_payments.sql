with payments as (
    select * from {{ ref('stg_sales__payments') }}
),

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
    where {{ in_reprocessing_window('_delivery_date') }}
    {%- endif %}
)

select * from final
