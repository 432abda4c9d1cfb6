-- Every ticket as it was known on each feature date: the last version of it delivered by then
-- (its status, first reply and rating then), with the customer identity resolution gives it.
-- stg_service__tickets keeps only a ticket's latest version, which may have been reopened or rated
-- since: the versions are read from stg_service__ticket_versions (each with its delivery date).
with feature_dates as (
    select as_of_date from {{ ref('feature_dates') }}
),

ticket_versions as not materialized (
    select * from {{ ref('stg_service__ticket_versions') }}
),

identity as not materialized (
    select * from {{ ref('int_customer_identity') }}
),

sla_targets as not materialized (
    select * from {{ ref('service_sla_targets') }}
),

versions as (
    select
        ticket_id,
        priority,
        ticket_status,
        created_at,
        updated_at,
        first_reply_at,
        cast(satisfaction_rating as integer) as satisfaction_rating,
        _is_deleted as is_deleted,
        _delivery_date as known_from,
        _loaded_at
    from ticket_versions
),

known_versions as (
    {{ versions_known_on('feature_dates', 'versions', ['ticket_id'], ['updated_at', 'is_deleted', 'known_from', '_loaded_at']) }}
),

final as (
    select
        known_versions.as_of_date,
        known_versions.ticket_id,
        identity.customer_id,
        known_versions.priority,
        known_versions.ticket_status,
        known_versions.created_at,
        known_versions.first_reply_at,
        {{ dbt.dateadd('hour', 'sla_targets.first_reply_target_hours', 'known_versions.created_at') }}
            as first_reply_due_at,
        -- Ratings outside 1-5 are flagged in staging; here they just don't count.
        case when known_versions.satisfaction_rating between 1 and 5 then known_versions.satisfaction_rating end
            as satisfaction_rating,
        known_versions.ticket_status not in ('solved', 'closed') as is_open
    from known_versions
    inner join identity
        on identity.source_table = 'tickets'
        and identity.source_key = cast(known_versions.ticket_id as {{ dbt.type_string() }})
    left join sla_targets
        on known_versions.priority = sla_targets.priority
    where cast(known_versions.created_at as date) <= known_versions.as_of_date
)

select * from final
