with tickets as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_service__tickets') }}
),

sla_targets as {{ cte_not_materialized() }} (
    select * from {{ ref('service_sla_targets') }}
),

identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

{% if is_incremental() -%}
-- Redone when delivered in the window, or when identity resolution moved its requester to
-- another customer.
tickets_to_build as (
    select ticket_id from tickets where {{ in_reprocessing_window() }}
    union
    {{ keys_with_stale_customer('ticket_id', 'identity', 'tickets') }}
),

{% endif -%}
timed as (
    select
        tickets.*,
        sla_targets.first_reply_target_hours,
        cast({{ dbt.dateadd('hour', 'sla_targets.first_reply_target_hours', 'tickets.created_at') }} as {{ dbt.type_timestamp() }})
            as first_reply_due_at,
        sla_targets.resolution_target_hours,
        cast({{ dbt.dateadd('hour', 'sla_targets.resolution_target_hours', 'tickets.created_at') }} as {{ dbt.type_timestamp() }})
            as resolution_due_at,
        -- What the desk knew of the ticket: its latest export, to the end of that day.
        cast({{ dbt.dateadd('day', 1, 'tickets._delivery_date') }} as {{ dbt.type_timestamp() }}) as known_until,
        {{ dbt.datediff('tickets.created_at', 'tickets.first_reply_at', 'second') }} as first_reply_seconds,
        {{ dbt.datediff('tickets.created_at', 'tickets.solved_at', 'second') }} as resolution_seconds
    from tickets
    left join sla_targets
        on tickets.priority = sla_targets.priority
    {%- if is_incremental() %}
    where tickets.ticket_id in (select ticket_id from tickets_to_build)
    {%- endif %}
),

final as (
    select
        timed.ticket_id,
        identity.customer_id,
        timed.requester_email,
        timed.channel,
        timed.category,
        timed.priority,
        timed.ticket_status,
        timed.created_at,
        cast(timed.created_at as date) as created_date,
        timed.first_reply_at,
        timed.solved_at,
        cast(timed.solved_at as date) as solved_date,
        cast(timed.first_reply_seconds / 60.0 as numeric(18, 2)) as first_reply_minutes,
        cast(timed.resolution_seconds / 3600.0 as numeric(18, 2)) as resolution_hours,
        cast(timed.first_reply_target_hours as integer) as first_reply_target_hours,
        timed.first_reply_due_at,
        -- Unanswered, the ticket breaches once its due time has passed by its latest export.
        case
            when timed.first_reply_at is not null then timed.first_reply_at > timed.first_reply_due_at
            else timed.first_reply_due_at < timed.known_until
        end as is_sla_breached,
        cast(timed.resolution_target_hours as integer) as resolution_target_hours,
        timed.resolution_due_at,
        -- A solved or closed ticket breaches when solved after it was due; any other (never solved,
        -- or reopened: solved_at still holds the earlier solve) once its due time has passed by
        -- its latest export.
        case
            when timed.ticket_status in ('solved', 'closed') then timed.solved_at > timed.resolution_due_at
            else timed.resolution_due_at < timed.known_until
        end as is_resolution_sla_breached,
        -- Reopened: the status history (chronological) holds a return to open after a solve.
        coalesce(timed.status_history like '%"solved"%"open"%', false) as is_reopened,
        timed.ticket_status in ('new', 'open', 'pending') as is_open,
        cast(timed.satisfaction_rating as integer) as satisfaction_rating,
        timed.satisfaction_comment,
        timed._delivery_date
    from timed
    left join identity
        on identity.source_table = 'tickets'
        and identity.source_key = cast(timed.ticket_id as {{ dbt.type_string() }})
)

select final.*, {{ built_at() }} as _built_at from final
