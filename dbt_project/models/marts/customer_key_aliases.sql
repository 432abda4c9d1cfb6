{#- Keys that identity resolution retired, each with the key of the customer who took over its
    records: ML results and exports made before a merge find the customer under its current key.
    The table reads its own previous state (a --full-refresh keeps it); an alias follows its
    target when that key retires too. -#}
{%- set previous_aliases = load_relation(this) if this is not none else none %}
with identity as {{ cte_not_materialized() }} (
    select * from {{ ref('int_customer_identity') }}
),

live_keys as (
    select distinct customer_id from identity
),

-- Keys the previous identity build gave that no record holds now: each goes to the customer that
-- took over most of its records.
retired_keys as (
    select identity.previous_customer_id, identity.customer_id, count(*) as records
    from identity
    left join live_keys on identity.previous_customer_id = live_keys.customer_id
    where identity.previous_customer_id is not null and live_keys.customer_id is null
    group by identity.previous_customer_id, identity.customer_id
),

new_aliases as (
    select previous_customer_id as retired_customer_id, favourite_customer_id as customer_id
    from ({{ favourite('retired_keys', ['previous_customer_id'], 'customer_id', weight='records') }}) as takers
),

final as (
    {%- if previous_aliases is not none %}
    select
        earlier.retired_customer_id,
        cast(coalesce(followed.customer_id, earlier.customer_id) as {{ dbt.type_string() }}) as customer_id,
        earlier.retired_at
    from {{ previous_aliases }} as earlier
    left join new_aliases as followed on earlier.customer_id = followed.retired_customer_id
    where earlier.retired_customer_id not in (select retired_customer_id from new_aliases)
    union all
    {%- endif %}
    select
        cast(retired_customer_id as {{ dbt.type_string() }}) as retired_customer_id,
        cast(customer_id as {{ dbt.type_string() }}) as customer_id,
        {{ built_at() }} as retired_at
    from new_aliases
)

select * from final
