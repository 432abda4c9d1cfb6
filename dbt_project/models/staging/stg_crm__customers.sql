with source as (
    select * from {{ source('raw_crm', 'customers') }}
),

renamed as (
    select
        cast(crm_id as {{ dbt.type_string() }}) as crm_id,
        trim(first_name) as first_name,
        trim(last_name) as last_name,
        lower(trim(email)) as email,
        cast(phone as {{ dbt.type_string() }}) as phone,
        cast(birth_date as date) as birth_date,
        lower(gender) as gender,
        cast(city as {{ dbt.type_string() }}) as city,
        upper(country) as country_code,
        cast(signup_date as date) as signup_date,
        lower(acquisition_channel) as acquisition_channel,
        lower(loyalty_tier) as loyalty_tier,
        cast(marketing_opt_in as boolean) as is_marketing_opt_in,
        nullif(trim(referred_by), '') as referred_by_crm_id,
        cast(modified_at as {{ dbt.type_timestamp() }}) as modified_at,
        _loaded_at
    from source
),

latest as (
    select distinct on (crm_id) *
    from renamed
    order by crm_id, modified_at desc, _loaded_at desc
)

select * from latest
