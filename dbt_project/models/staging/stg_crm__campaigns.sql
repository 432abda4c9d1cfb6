with source as {{ cte_not_materialized() }} (
    select * from {{ source('raw_crm', 'campaigns') }}
),

renamed as (
    select
        cast(campaign_id as {{ dbt.type_string() }}) as campaign_id,
        trim(name) as campaign_name,
        lower(channel) as channel,
        cast(start_date as date) as start_date,
        cast(end_date as date) as end_date,
        cast(cost as numeric(18, 4)) as cost,
        coalesce(_deleted, false) as _is_deleted,
        _delivery_date,
        _loaded_at
    from source
),

-- Campaigns carry no change timestamp: the latest delivery wins.
latest as (
    {{ latest_version('renamed', ['campaign_id'], []) }}
)

{%- set checks = {
    'end_before_start': 'end_date < start_date',
    'negative_cost': 'cost < 0',
    'implausible_start_date': 'not ' ~ is_plausible_date('start_date'),
    'implausible_end_date': 'not ' ~ is_plausible_date('end_date'),
} -%}
{%- do checks.update(text_length_checks(['campaign_name'])) %}

select
    campaign_id,
    campaign_name,
    channel,
    start_date,
    end_date,
    cost,
    {{ quality_flags(checks) }},
    _delivery_date,
    _loaded_at
from latest
where not _is_deleted
