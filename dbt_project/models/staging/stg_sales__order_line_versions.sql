-- Every version of every order line raw holds, typed but not deduplicated, tombstones included (a
-- view: raw holds the rows): stg_sales__order_lines keeps the latest, and changed_customers finds
-- the lines delivered or deleted since the feature models last ran.
{{ config(materialized='view') }}

select
    cast(order_id as bigint) as order_id,
    cast(line_number as bigint) as line_number,
    cast(sku as {{ dbt.type_string() }}) as sku,
    cast(quantity as bigint) as quantity,
    cast(unit_price as numeric(18, 4)) as unit_price,
    cast(discount as numeric(18, 4)) as discount_amount,
    cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
    coalesce(_deleted, false) as _is_deleted,
    _delivery_date,
    _loaded_at
from {{ source('raw_sales', 'order_lines') }}
