-- Every ticket in each state it was known in (its status, first reply and rating), and the days it
-- was known so: one row per ticket and span (known_from, known_until exclusive, null while
-- current) in which the last version of it delivered was the same, with the customer identity
-- resolution gives it. The tickets known on a date are the rows whose span holds it (macro
-- is_known_on), as orders_as_known. stg_service__tickets keeps only a ticket's latest version,
-- which may have been reopened or rated since: the versions are read from
-- stg_service__ticket_versions (each with its delivery date).
with ticket_versions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_service__ticket_versions') }}
),

identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

sla_targets as {{ cte_not_materialized() }} (
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

spans as (
    {{ version_spans('versions', ['ticket_id'], ['updated_at', 'is_deleted', 'known_from', '_loaded_at']) }}
),

-- A ticket is unknown before the day it was opened, whatever a version says.
dated_spans as (
    select
        *,
        greatest(known_from, cast(created_at as date)) as known_from_opening
    from spans
),

final as (
    select
        dated_spans.ticket_id,
        identity.customer_id,
        dated_spans.priority,
        dated_spans.ticket_status,
        dated_spans.created_at,
        dated_spans.first_reply_at,
        {{ dbt.dateadd('hour', 'sla_targets.first_reply_target_hours', 'dated_spans.created_at') }}
            as first_reply_due_at,
        -- Ratings outside 1-5 are flagged in staging; here they just don't count.
        case when dated_spans.satisfaction_rating between 1 and 5 then dated_spans.satisfaction_rating end
            as satisfaction_rating,
        dated_spans.ticket_status not in ('solved', 'closed') as is_open,
        cast(dated_spans.known_from_opening as date) as known_from,
        cast(dated_spans.known_until as date) as known_until
    from dated_spans
    inner join identity
        on identity.source_table = 'tickets'
        and identity.source_key = cast(dated_spans.ticket_id as {{ dbt.type_string() }})
    left join sla_targets
        on dated_spans.priority = sla_targets.priority
    -- A tombstone's span knows no ticket; a span that ends before it starts was never the latest.
    where not dated_spans.is_deleted
        and (dated_spans.known_until is null or dated_spans.known_until > dated_spans.known_from_opening)
)

select * from final
