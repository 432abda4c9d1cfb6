-- Incremental: redoes the tickets with a version loaded since its last build (macros/incremental_staging.sql).
{{ config(
    materialized='incremental',
    unique_key='ticket_id',
    post_hook=["{{ delete_staged_rows_of_deleted_records(ref('stg_service__ticket_versions'), ['ticket_id']) }}"],
) }}

with versions as {{ cte_not_materialized() }} (
    {{ versions_to_stage(ref('stg_service__ticket_versions'), ['ticket_id'], is_incremental()) }}
),

latest as (
    {{ latest_version('versions', ['ticket_id'], ['updated_at desc']) }}
)

{%- set checks = {
    'invalid_email': 'not is_email_valid',
    'satisfaction_out_of_range': 'satisfaction_rating not between 1 and 5',
    'solved_before_created': 'solved_at < created_at',
    'created_after_updated': 'created_at > updated_at',
    'implausible_created_at': 'not ' ~ is_plausible_date('created_at'),
    'implausible_updated_at': 'not ' ~ is_plausible_date('updated_at'),
    'implausible_first_reply_at': 'not ' ~ is_plausible_date('first_reply_at'),
    'implausible_solved_at': 'not ' ~ is_plausible_date('solved_at'),
} -%}
{%- do checks.update(text_length_checks(['requester_email'])) -%}
{%- do checks.update(text_length_checks(['satisfaction_comment'], var('max_comment_length'))) %}

select
    ticket_id,
    requester_email,
    is_email_valid,
    channel,
    category,
    priority,
    ticket_status,
    created_at,
    updated_at,
    first_reply_at,
    solved_at,
    satisfaction_rating,
    satisfaction_comment,
    tags,
    status_history,
    {{ quality_flags(checks) }},
    _delivery_date,
    _loaded_at,
    {{ built_at() }} as _built_at
from latest
where not _is_deleted
