-- Where does the service desk miss its targets? Tickets opened in the 90 days up to the newest
-- ticket, per category: how many, how many missed the first-reply target and the resolution target
-- (targets per priority), the breach rates, and the mean satisfaction rating where rated.
with recent as (
    select *
    from bi.fct_tickets
    where created_date > (select max(created_date) from bi.fct_tickets) - interval '90 days'
)

select
    category,
    count(*) as tickets,
    sum(case when is_sla_breached then 1 else 0 end) as first_reply_breaches,
    round(cast(100.0 * avg(case when is_sla_breached then 1 else 0 end) as decimal(18, 6)), 1) as first_reply_breach_pct,
    sum(case when is_resolution_sla_breached then 1 else 0 end) as resolution_breaches,
    round(cast(100.0 * avg(case when is_resolution_sla_breached then 1 else 0 end) as decimal(18, 6)), 1) as resolution_breach_pct,
    round(cast(avg(satisfaction_rating) as decimal(18, 6)), 2) as mean_satisfaction
from recent
group by category
order by first_reply_breach_pct desc, tickets desc
