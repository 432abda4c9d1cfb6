with customers as (
    select * from {{ ref('stg_crm__customers') }}
),

final as (
    select
        crm_id,
        email,
        first_name,
        last_name,
        birth_date,
        gender,
        city,
        country_code,
        signup_date,
        acquisition_channel,
        loyalty_tier,
        is_marketing_opt_in,
        referred_by_crm_id
    from customers
)

select * from final
