-- SCD2 history of the CRM contacts' changing attributes, one row per change, rebuilt from every
-- version raw holds: a backfill and a run per day see the same versions, so give the same history.
-- Versions are ordered by the CRM's own modification time (a version delivered late still lands
-- where it belongs), ties by delivery date and version hash, never by load time.
with versions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__customer_versions') }}
    where not _is_deleted
),

identities as (
    select source_key as crm_id, customer_id
    from {{ ref('int_customer_identity') }}
    where source_system = 'crm'
),

compared as (
    select
        *,
        lag(_version_hash) over contact_versions as previous_version_hash,
        lag(first_name) over contact_versions as previous_first_name,
        lag(last_name) over contact_versions as previous_last_name,
        lag(email) over contact_versions as previous_email,
        lag(phone) over contact_versions as previous_phone,
        lag(city) over contact_versions as previous_city,
        lag(country_code) over contact_versions as previous_country_code,
        lag(loyalty_tier) over contact_versions as previous_loyalty_tier,
        lag(is_marketing_opt_in) over contact_versions as previous_is_marketing_opt_in
    from versions
    window contact_versions as (partition by crm_id order by modified_at, _delivery_date, _version_hash)
),

changes as (
    select *
    from compared
    where previous_version_hash is null
        or first_name is distinct from previous_first_name
        or last_name is distinct from previous_last_name
        or email is distinct from previous_email
        or phone is distinct from previous_phone
        or city is distinct from previous_city
        or country_code is distinct from previous_country_code
        or loyalty_tier is distinct from previous_loyalty_tier
        or is_marketing_opt_in is distinct from previous_is_marketing_opt_in
),

final as (
    select
        -- The hash as the hex text md5 gave (a uuid's text has hyphens): ids made before raw held
        -- it as a uuid stay the same.
        cast(md5(changes.crm_id || ':' || replace(cast(changes._version_hash as {{ dbt.type_string() }}), '-', '')) as {{ dbt.type_string() }})
            as customer_version_id,
        cast(identities.customer_id as {{ dbt.type_string() }}) as customer_id,
        cast(changes.crm_id as {{ dbt.type_string() }}) as crm_id,
        cast(changes.first_name as {{ dbt.type_string() }}) as first_name,
        cast(changes.last_name as {{ dbt.type_string() }}) as last_name,
        cast(changes.email as {{ dbt.type_string() }}) as email,
        cast(changes.phone as {{ dbt.type_string() }}) as phone,
        cast(changes.city as {{ dbt.type_string() }}) as city,
        cast(changes.country_code as {{ dbt.type_string() }}) as country_code,
        cast(changes.loyalty_tier as {{ dbt.type_string() }}) as loyalty_tier,
        cast(changes.is_marketing_opt_in as boolean) as is_marketing_opt_in,
        cast(changes.modified_at as {{ dbt.type_timestamp() }}) as valid_from,
        cast(lead(changes.modified_at) over (
            partition by changes.crm_id order by changes.modified_at, changes._delivery_date, changes._version_hash
        ) as {{ dbt.type_timestamp() }}) as valid_to
    from changes
    left join identities on changes.crm_id = identities.crm_id
)

select
    *,
    cast(valid_to is null as boolean) as is_current
from final
