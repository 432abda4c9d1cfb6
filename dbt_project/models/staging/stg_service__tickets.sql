with source as (
    select * from {{ source('raw_service', 'tickets') }}
),

renamed as (
    select
        cast(ticket_id as bigint) as ticket_id,
        {{ normalize_email('requester_email') }} as requester_email,
        {{ is_valid_email('requester_email') }} as is_email_valid,
        lower(channel) as channel,
        lower(category) as category,
        lower(priority) as priority,
        lower(status) as ticket_status,
        cast(created_at as {{ dbt.type_timestamp() }}) as created_at,
        cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
        cast(first_reply_at as {{ dbt.type_timestamp() }}) as first_reply_at,
        cast(solved_at as {{ dbt.type_timestamp() }}) as solved_at,
        cast(satisfaction_rating as bigint) as satisfaction_rating,
        nullif(trim(satisfaction_comment), '') as satisfaction_comment,
        cast(tags as {{ dbt.type_string() }}) as tags,
        cast(status_history as {{ dbt.type_string() }}) as status_history,
        coalesce(_deleted, false) as _is_deleted,
        _delivery_date,
        _loaded_at
    from source
),

latest as (
    {{ latest_version('renamed', ['ticket_id'], ['updated_at desc']) }}
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
    _loaded_at
from latest
where not _is_deleted
