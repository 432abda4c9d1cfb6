-- Every version of every ticket raw holds, typed and cleaned but not deduplicated (a view: raw
-- holds the rows): the latest is stg_service__tickets, and point-in-time features replay the rest.
{{ config(materialized='view') }}

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
from {{ source('raw_service', 'tickets') }}
