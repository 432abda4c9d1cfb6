with source as {{ cte_not_materialized() }} (
    select * from {{ source('raw_crm', 'campaign_members') }}
),

renamed as (
    select
        cast(campaign_id as {{ dbt.type_string() }}) as campaign_id,
        nullif(trim(crm_id), '') as crm_id,
        lower(member_group) as member_group,
        cast(sent as boolean) as sent,
        cast(opened as boolean) as opened,
        cast(clicked as boolean) as clicked,
        cast(converted as boolean) as converted,
        coalesce(_deleted, false) as _is_deleted,
        _delivery_date,
        _loaded_at
    from source
),

-- Members carry no change timestamp: the latest delivery wins.
latest as (
    {{ latest_version('renamed', ['campaign_id', 'crm_id'], []) }}
)

select
    campaign_id,
    crm_id,
    member_group,
    sent,
    opened,
    clicked,
    converted,
    {{ quality_flags({
        'control_member_sent': "member_group = 'control' and sent",
        'response_without_send': 'not sent and (opened or clicked)',
    }) }},
    _delivery_date,
    _loaded_at
from latest
where not _is_deleted
