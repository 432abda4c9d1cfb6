-- Incremental: redoes the orders with a version loaded since its last build (macros/incremental_staging.sql).
{{ config(
    materialized='incremental',
    unique_key='order_id',
    post_hook=["{{ delete_staged_rows_of_deleted_records(ref('stg_sales__order_versions'), ['order_id']) }}"],
) }}

with versions as {{ cte_not_materialized() }} (
    {{ versions_to_stage(ref('stg_sales__order_versions'), ['order_id'], is_incremental()) }}
),

latest as (
    {{ latest_version('versions', ['order_id'], ['updated_at desc']) }}
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
    _loaded_at,
    {{ built_at() }} as _built_at
from latest
where not _is_deleted
