with source as {{ cte_not_materialized() }} (
    select * from {{ source('raw_crm', 'interactions') }}
),

renamed as (
    select
        cast(interaction_id as {{ dbt.type_string() }}) as interaction_id,
        nullif(trim(crm_id), '') as crm_id,
        lower(interaction_type) as interaction_type,
        lower(outcome) as outcome,
        cast(occurred_at as {{ dbt.type_timestamp() }}) as occurred_at,
        coalesce(_deleted, false) as _is_deleted,
        _delivery_date,
        _loaded_at
    from source
),

latest as (
    {{ latest_version('renamed', ['interaction_id'], ['occurred_at desc']) }}
)

select
    interaction_id,
    crm_id,
    interaction_type,
    outcome,
    occurred_at,
    {{ quality_flags({'implausible_occurred_at': 'not ' ~ is_plausible_date('occurred_at')}) }},
    _delivery_date,
    _loaded_at
from latest
where not _is_deleted
