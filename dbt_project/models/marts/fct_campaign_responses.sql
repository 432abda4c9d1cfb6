with members as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__campaign_members') }}
),

campaigns as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__campaigns') }}
),

identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

final as (
    select
        {{ dbt.concat(['members.campaign_id', "'|'", 'members.crm_id']) }} as campaign_member_key,
        members.campaign_id,
        members.crm_id,
        identity.customer_id,
        members.member_group,
        members.member_group = 'treatment' as is_treatment,
        campaigns.channel as campaign_channel,
        campaigns.start_date as campaign_start_date,
        campaigns.end_date as campaign_end_date,
        coalesce(members.sent, false) as was_sent,
        coalesce(members.opened, false) as has_opened,
        coalesce(members.clicked, false) as has_clicked,
        -- Responding is engaging with the message; only a sent campaign can be responded to.
        coalesce(members.opened or members.clicked, false) as has_responded,
        coalesce(members.converted, false) as has_converted,
        members.is_valid,
        members.invalid_reason
    from members
    left join campaigns
        on members.campaign_id = campaigns.campaign_id
    left join identity
        on identity.source_table = 'customers'
        and identity.source_key = members.crm_id
)

select * from final
