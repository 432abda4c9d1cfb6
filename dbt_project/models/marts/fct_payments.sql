-- A view: its rows are staging's payments with typed amounts and their date, stored once (in
-- stg_sales__payments; BI reads publish's copy). A payment carries staging's `_built_at`: staging
-- rewrites a payment when a version of it or of its order is loaded (its orphan flag follows the
-- order), which is when the view's row can change, so publish and the day's tests read the rows
-- staging wrote.
with payments as {{ cte_not_materialized() }} (
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
        _delivery_date,
        _built_at
    from payments
)

select * from final
