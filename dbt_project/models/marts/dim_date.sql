{#- Five digits of offsets (0-99,999 days, 273 years) from cross joins: portable where
    generate_series is not. -#}
{%- set digit_values = range(10) | join('), (') -%}

with orders as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_sales__orders') }}
),

payments as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_sales__payments') }}
),

customers as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__customers') }}
),

interactions as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_crm__interactions') }}
),

tickets as {{ cte_not_materialized() }} (
    select * from {{ ref('stg_service__tickets') }}
),

-- Implausible dates (flagged in staging) are left out: one typed year 9999 would stretch the
-- calendar past its 100,000 days.
known_dates as (
{%- for column, relation in [
    ('ordered_at', 'orders'),
    ('paid_at', 'payments'),
    ('signup_date', 'customers'),
    ('occurred_at', 'interactions'),
    ('created_at', 'tickets'),
    ('solved_at', 'tickets'),
] %}
    select cast(min({{ column }}) as date) as first_date, cast(max({{ column }}) as date) as last_date
    from {{ relation }}
    where {{ is_plausible_date(column) }}
    {%- if not loop.last %}
    union all
    {%- endif %}
{%- endfor %}
),

-- Whole years around every plausible date the facts and customers carry, so each finds its day.
spine_bounds as (
    select
        cast({{ dbt.date_trunc('year', 'min(first_date)') }} as date) as first_day,
        cast({{ dbt.dateadd('day', -1, dbt.dateadd('year', 1, dbt.date_trunc('year', 'max(last_date)'))) }} as date)
            as last_day
    from known_dates
),

digits as (
    select digit
    from (values ({{ digit_values }})) as digits (digit)
),

day_offsets as (
    select
        ones.digit
        + 10 * tens.digit
        + 100 * hundreds.digit
        + 1000 * thousands.digit
        + 10000 * ten_thousands.digit as day_offset
    from digits as ones
    cross join digits as tens
    cross join digits as hundreds
    cross join digits as thousands
    cross join digits as ten_thousands
),

days as (
    select cast({{ dbt.dateadd('day', 'day_offsets.day_offset', 'spine_bounds.first_day') }} as date) as date_day
    from spine_bounds
    cross join day_offsets
    where day_offsets.day_offset <= {{ dbt.datediff('spine_bounds.first_day', 'spine_bounds.last_day', 'day') }}
),

final as (
    select
        date_day,
        cast(extract(year from date_day) as integer) as year_number,
        cast(extract(quarter from date_day) as integer) as quarter_number,
        cast(extract(month from date_day) as integer) as month_number,
        cast(extract(day from date_day) as integer) as day_of_month,
        cast({{ iso_day_of_week('date_day') }} as integer) as iso_day_of_week,
        cast({{ dbt.date_trunc('week', 'date_day') }} as date) as week_start_date,
        cast({{ dbt.date_trunc('month', 'date_day') }} as date) as month_start_date,
        cast({{ dbt.date_trunc('quarter', 'date_day') }} as date) as quarter_start_date,
        cast({{ dbt.date_trunc('year', 'date_day') }} as date) as year_start_date,
        {{ iso_day_of_week('date_day') }} in (6, 7) as is_weekend
    from days
)

select * from final
