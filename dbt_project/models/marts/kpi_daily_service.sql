-- Recomputed whole, written where it moved: the backlog is a running count over every earlier day,
-- and a rewritten ticket's previous solve day (a reopened ticket solved again) is gone from the
-- fact, so the days a change touched cannot be told from the facts alone. The whole recompute is
-- one pass over a few columns of fct_tickets for a few hundred rows; only the days whose figures
-- moved are written (and stamped with _built_at). Days now outside the tickets' span go in the
-- post-hook.
with tickets as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_tickets') }}
),

dates as {{ cte_not_materialized() }} (
    select * from {{ ref('dim_date') }}
),

ticket_span as (
    select
        min(created_date) as first_day,
        max(case when solved_date > created_date then solved_date else created_date end) as last_day
    from tickets
),

service_days as (
    select dates.date_day
    from dates
    inner join ticket_span
        on dates.date_day between ticket_span.first_day and ticket_span.last_day
),

opened as (
    select
        created_date as date_day,
        count(*) as opened_tickets,
        sum(case when is_sla_breached then 1 else 0 end) as breached_tickets,
        count(is_sla_breached) as sla_judged_tickets,
        -- percentile_cont ... within group is standard SQL, the same on PostgreSQL and DuckDB.
        percentile_cont(0.5) within group (order by cast(first_reply_minutes as {{ type_double() }}))
            as median_first_reply_minutes
    from tickets
    group by created_date
),

solved as (
    select
        solved_date as date_day,
        count(*) as solved_tickets,
        count(satisfaction_rating) as csat_responses,
        avg(cast(satisfaction_rating as {{ type_double() }})) as csat
    from tickets
    where solved_date is not null
    group by solved_date
),

daily as (
    select
        service_days.date_day,
        coalesce(opened.opened_tickets, 0) as opened_tickets,
        coalesce(solved.solved_tickets, 0) as solved_tickets,
        opened.breached_tickets,
        opened.sla_judged_tickets,
        opened.median_first_reply_minutes,
        solved.csat_responses,
        solved.csat
    from service_days
    left join opened
        on service_days.date_day = opened.date_day
    left join solved
        on service_days.date_day = solved.date_day
),

final as (
    select
        date_day as service_date,
        cast(opened_tickets as integer) as opened_tickets,
        cast(solved_tickets as integer) as solved_tickets,
        -- Tickets open at the end of the day: every ticket opened so far less every one solved.
        cast(
            sum(opened_tickets) over (order by date_day rows between unbounded preceding and current row)
            - sum(solved_tickets) over (order by date_day rows between unbounded preceding and current row)
            as integer
        ) as backlog_tickets,
        cast(median_first_reply_minutes as {{ type_double() }}) as median_first_reply_minutes,
        cast(breached_tickets as {{ type_double() }}) / nullif(sla_judged_tickets, 0) as sla_breach_rate,
        cast(coalesce(csat_responses, 0) as integer) as csat_responses,
        cast(csat as {{ type_double() }}) as csat
    from daily
),

changed as (
    {{ rows_changed_from_this('final', [
        'service_date', 'opened_tickets', 'solved_tickets', 'backlog_tickets', 'median_first_reply_minutes',
        'sla_breach_rate', 'csat_responses', 'csat',
    ]) }}
)

select changed.*, {{ built_at() }} as _built_at from changed
