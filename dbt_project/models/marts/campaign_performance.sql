{#- z for a two-sided 95% interval under the normal approximation. -#}
{%- set z_95 = 1.959963984540054 -%}

with responses as {{ cte_not_materialized() }} (
    select * from {{ ref('fct_campaign_responses') }}
),

campaigns as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__campaigns') }}
),

group_counts as (
    select
        campaign_id,
        sum(case when is_treatment then 1 else 0 end) as treatment_members,
        sum(case when is_treatment then 0 else 1 end) as control_members,
        sum(case when is_treatment and has_responded then 1 else 0 end) as treatment_responses,
        sum(case when not is_treatment and has_responded then 1 else 0 end) as control_responses,
        sum(case when is_treatment and has_converted then 1 else 0 end) as treatment_conversions,
        sum(case when not is_treatment and has_converted then 1 else 0 end) as control_conversions
    from responses
    group by campaign_id
),

rates as (
    select
        group_counts.*,
        cast(treatment_responses as {{ type_double() }}) / nullif(treatment_members, 0) as treatment_response_rate,
        cast(control_responses as {{ type_double() }}) / nullif(control_members, 0) as control_response_rate,
        cast(treatment_conversions as {{ type_double() }}) / nullif(treatment_members, 0) as treatment_conversion_rate,
        cast(control_conversions as {{ type_double() }}) / nullif(control_members, 0) as control_conversion_rate
    from group_counts
),

-- Uplift is the difference of the two conversion proportions; its standard error under the
-- normal approximation is sqrt(p1 (1 - p1) / n1 + p0 (1 - p0) / n0).
uplift as (
    select
        rates.*,
        treatment_conversion_rate - control_conversion_rate as conversion_uplift,
        sqrt(
            treatment_conversion_rate * (1 - treatment_conversion_rate) / treatment_members
            + control_conversion_rate * (1 - control_conversion_rate) / control_members
        ) as uplift_standard_error
    from rates
),

final as (
    select
        campaigns.campaign_id,
        campaigns.campaign_name,
        campaigns.channel,
        campaigns.start_date,
        campaigns.end_date,
        cast(campaigns.cost as numeric(18, 2)) as cost,
        cast(coalesce(uplift.treatment_members, 0) as integer) as treatment_members,
        cast(coalesce(uplift.control_members, 0) as integer) as control_members,
        cast(coalesce(uplift.treatment_responses, 0) as integer) as treatment_responses,
        cast(coalesce(uplift.control_responses, 0) as integer) as control_responses,
        cast(coalesce(uplift.treatment_conversions, 0) as integer) as treatment_conversions,
        cast(coalesce(uplift.control_conversions, 0) as integer) as control_conversions,
        uplift.treatment_response_rate,
        uplift.control_response_rate,
        uplift.treatment_conversion_rate,
        uplift.control_conversion_rate,
        uplift.conversion_uplift,
        uplift.conversion_uplift - {{ z_95 }} * uplift.uplift_standard_error as uplift_ci_lower,
        uplift.conversion_uplift + {{ z_95 }} * uplift.uplift_standard_error as uplift_ci_upper,
        -- Members are exported when the campaign ends: until then there is nothing to measure.
        uplift.campaign_id is not null as has_results
    from campaigns
    left join uplift
        on campaigns.campaign_id = uplift.campaign_id
)

select * from final
