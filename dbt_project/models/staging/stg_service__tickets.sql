with source as (
    select * from {{ source('raw_service', 'tickets') }}
),

renamed as (
    select
        cast(ticket_id as bigint) as ticket_id,
        lower(trim(requester_email)) as requester_email,
        lower(channel) as channel,
        lower(category) as category,
        lower(priority) as priority,
        lower(status) as ticket_status,
        cast(created_at as {{ dbt.type_timestamp() }}) as created_at,
        cast(updated_at as {{ dbt.type_timestamp() }}) as updated_at,
        cast(first_reply_at as {{ dbt.type_timestamp() }}) as first_reply_at,
        cast(solved_at as {{ dbt.type_timestamp() }}) as solved_at,
        cast(satisfaction_rating as bigint) as satisfaction_rating,
        _loaded_at
    from source
),

latest as (
    select distinct on (ticket_id) *
    from renamed
    order by ticket_id, updated_at desc, _loaded_at desc
)

select * from latest
