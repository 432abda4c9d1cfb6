with source as (
    select * from {{ source('raw_sales', 'order_lines') }}
),

renamed as (
    select
        cast(order_id as bigint) as order_id,
        cast(line_number as bigint) as line_number,
        cast(sku as {{ dbt.type_string() }}) as sku,
        cast(quantity as bigint) as quantity,
        cast(unit_price as numeric(18, 4)) as unit_price,
        cast(discount as numeric(18, 4)) as discount_amount,
        cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
        _loaded_at,
        coalesce(_deleted, false) as is_deleted
    from source
),

latest as (
    select distinct on (order_id, line_number) *
    from renamed
    order by order_id, line_number, updated_at desc, is_deleted desc, _loaded_at desc
)

-- A record hard-deleted in the source has a tombstone as its latest raw version: left out.
select
    order_id,
    line_number,
    sku,
    quantity,
    unit_price,
    discount_amount,
    updated_at,
    _loaded_at
from latest
where not is_deleted
