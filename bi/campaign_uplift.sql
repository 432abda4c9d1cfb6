-- Which campaigns changed behaviour? Every campaign with results: conversion rate of those sent it
-- against its control group (who were held back), the difference (uplift, in percentage points)
-- with its 95% interval, and a verdict: only an interval wholly above zero shows the campaign worked.
select
    campaign_name,
    channel,
    start_date,
    end_date,
    treatment_members,
    control_members,
    round(cast(100.0 * treatment_conversion_rate as decimal(18, 6)), 2) as treatment_conversion_pct,
    round(cast(100.0 * control_conversion_rate as decimal(18, 6)), 2) as control_conversion_pct,
    round(cast(100.0 * conversion_uplift as decimal(18, 6)), 2) as uplift_points,
    round(cast(100.0 * uplift_ci_lower as decimal(18, 6)), 2) as uplift_ci_lower_points,
    round(cast(100.0 * uplift_ci_upper as decimal(18, 6)), 2) as uplift_ci_upper_points,
    case
        when uplift_ci_lower > 0 then 'worked'
        when uplift_ci_upper < 0 then 'backfired'
        else 'not shown'
    end as verdict
from bi.campaign_performance
where has_results
order by conversion_uplift desc
