with versions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__customer_versions') }}
),

latest as (
    {{ latest_version('versions', ['crm_id'], ['modified_at desc']) }}
)

-- CRM exports never delete, but a tombstone would mean the contact is gone: left out.
select
    crm_id,
    first_name,
    last_name,
    email,
    is_email_valid,
    phone,
    phone_as_entered,
    birth_date,
    gender,
    city,
    country_code,
    signup_date,
    acquisition_channel,
    loyalty_tier,
    is_marketing_opt_in,
    referred_by_crm_id,
    modified_at,
    is_valid,
    invalid_reason,
    _delivery_date,
    _loaded_at
from latest
where not _is_deleted
