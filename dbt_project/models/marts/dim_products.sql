with products as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_sales__products') }}
),

final as (
    select
        sku,
        product_name,
        category,
        subcategory,
        cast(list_price as numeric(18, 2)) as list_price,
        cast(unit_cost as numeric(18, 2)) as unit_cost,
        cast(list_price - unit_cost as numeric(18, 2)) as unit_margin,
        updated_at
    from products
)

select * from final
