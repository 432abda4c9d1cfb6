with source as (
    select * from {{ source('raw_sales', 'orders') }}
),

renamed as (
    select
        cast(order_id as bigint) as order_id,
        {{ normalize_email('customer_email') }} as customer_email,
        {{ is_valid_email('customer_email') }} as is_email_valid,
        nullif(trim(crm_id), '') as crm_id,
        lower(channel) as channel,
        cast(store_id as {{ dbt.type_string() }}) as store_id,
        lower(status) as order_status,
        cast(created_at as {{ dbt.type_timestamp() }}) as ordered_at,
        cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
        coalesce(_deleted, false) as _is_deleted,
        _delivery_date,
        _loaded_at
    from source
),

latest as (
    {{ latest_version('renamed', ['order_id'], ['updated_at desc']) }}
)

{%- set checks = {
    'invalid_email': 'not is_email_valid',
    'nonpositive_order_id': 'order_id <= 0',
    'implausible_ordered_at': 'not ' ~ is_plausible_date('ordered_at'),
    'implausible_updated_at': 'not ' ~ is_plausible_date('updated_at'),
    'created_after_updated': 'ordered_at > updated_at',
} -%}
{%- do checks.update(text_length_checks(['customer_email'])) %}

-- A record hard-deleted in the source has a tombstone as its latest raw version: left out.
select
    order_id,
    customer_email,
    is_email_valid,
    crm_id,
    channel,
    store_id,
    order_status,
    ordered_at,
    updated_at,
    {{ quality_flags(checks) }},
    _delivery_date,
    _loaded_at
from latest
where not _is_deleted
