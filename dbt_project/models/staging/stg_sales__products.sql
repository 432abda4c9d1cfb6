with source as {{ cte_not_materialized() }} (
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
        coalesce(_deleted, false) as _is_deleted,
        _delivery_date,
        _loaded_at
    from source
),

latest as (
    {{ latest_version('renamed', ['sku'], ['updated_at desc']) }}
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
    _delivery_date,
    _loaded_at
from latest
where not _is_deleted
