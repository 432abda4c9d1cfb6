-- Which customer segments bring the revenue? Each RFM segment of the latest scoring: its customers,
-- their revenue over the 365 days up to that date (orders that count as revenue: not cancelled or
-- returned), its share of that revenue, and revenue per customer.
with segments as (
    select customer_id, rfm_segment, as_of_date from bi.customer_segments_latest
),

revenue as (
    select segments.rfm_segment, segments.customer_id, coalesce(sum(orders.net_amount), 0) as revenue_365d
    from segments
    left join bi.fct_orders as orders
        on orders.customer_id = segments.customer_id
        and orders.is_revenue
        and orders.order_date > segments.as_of_date - interval '365 days'
        and orders.order_date <= segments.as_of_date
    group by segments.rfm_segment, segments.customer_id
)

select
    rfm_segment,
    count(*) as customers,
    round(cast(sum(revenue_365d) as decimal(18, 6)), 2) as revenue_365d,
    round(cast(100.0 * sum(revenue_365d) / nullif(sum(sum(revenue_365d)) over (), 0) as decimal(18, 6)), 1) as revenue_share_pct,
    round(cast(sum(revenue_365d) / count(*) as decimal(18, 6)), 2) as revenue_per_customer
from revenue
group by rfm_segment
order by revenue_365d desc
