-- Where is churn risk concentrated? For each RFM segment, the customers scored by the churn model on
-- its latest date, their mean probability of placing no order in the next 90 days, and how many are
-- in the high-risk band. Segments and scores are matched on the same as-of date.
select
    segments.rfm_segment,
    count(*) as customers,
    round(cast(avg(scores.churn_probability) as decimal(18, 6)), 3) as mean_churn_probability,
    sum(case when scores.risk_band = 'high' then 1 else 0 end) as high_risk_customers,
    round(cast(100.0 * avg(case when scores.risk_band = 'high' then 1 else 0 end) as decimal(18, 6)), 1) as high_risk_pct
from bi.churn_scores_latest as scores
inner join bi.customer_segments as segments
    on segments.customer_id = scores.customer_id
    and segments.as_of_date = scores.as_of_date
group by segments.rfm_segment
order by mean_churn_probability desc
