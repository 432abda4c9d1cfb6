with source as (
    select * from {{ source('raw_sales', 'products') }}
),

renamed as (
    select
        cast(sku as {{ dbt.type_string() }}) as sku,
        cast(name as {{ dbt.type_string() }}) as product_name,
        cast(category as {{ dbt.type_string() }}) as category,
        cast(subcategory as {{ dbt.type_string() }}) as subcategory,
        cast(list_price as numeric(18, 4)) as list_price,
        cast(unit_cost as numeric(18, 4)) as unit_cost,
        cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
        _loaded_at,
        coalesce(_deleted, false) as is_deleted
    from source
),

latest as (
    select distinct on (sku) *
    from renamed
    order by sku, updated_at desc, is_deleted desc, _loaded_at desc
)

-- A record hard-deleted in the source has a tombstone as its latest raw version: left out.
select
    sku,
    product_name,
    category,
    subcategory,
    list_price,
    unit_cost,
    updated_at,
    _loaded_at
from latest
where not is_deleted
