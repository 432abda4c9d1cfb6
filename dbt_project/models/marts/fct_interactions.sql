with interactions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__interactions') }}
),

identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

{% if is_incremental() -%}
-- Redone when delivered in the window, or when identity resolution moved its contact to another
-- customer.
interactions_to_build as (
    select interaction_id from interactions where {{ in_reprocessing_window() }}
    union
    {{ keys_with_stale_customer('interaction_id', 'identity', 'customers', 'crm_id') }}
),

{% endif -%}
final as (
    select
        interactions.interaction_id,
        identity.customer_id,
        interactions.crm_id,
        interactions.interaction_type,
        interactions.outcome,
        interactions.occurred_at,
        cast(interactions.occurred_at as date) as occurred_date,
        interactions._delivery_date
    from interactions
    left join identity
        on identity.source_table = 'customers'
        and identity.source_key = interactions.crm_id
    {%- if is_incremental() %}
    where interactions.interaction_id in (select interaction_id from interactions_to_build)
    {%- endif %}
)

select final.*, {{ built_at() }} as _built_at from final
