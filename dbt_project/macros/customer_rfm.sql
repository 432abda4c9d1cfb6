{#- The purchase measures customer_360 and the features share, so that recency, frequency, monetary
    value and favourite category mean the same wherever they show. Each caller hands in the orders
    placed by its reference date (customer_360's reference date, or each feature date), with the
    columns of fct_orders: customer_id, order_id, order_date, net_amount, is_revenue. -#}

{#- Recency, frequency and monetary value: aggregate expressions for a select over such orders
    grouped per customer (and reference date). Only revenue orders count (see fct_orders.is_revenue):
    frequency is their number, monetary their net amount, first_/last_revenue_order_date their
    earliest and latest order dates, recency_days the days from the latest to `reference_date` (an
    expression with one value per group); null dates and recency without a revenue order. -#}
{% macro rfm_measures(reference_date) -%}
    sum(case when is_revenue then 1 else 0 end) as frequency,
    sum(case when is_revenue then net_amount else 0 end) as monetary,
    min(case when is_revenue then order_date end) as first_revenue_order_date,
    max(case when is_revenue then order_date end) as last_revenue_order_date,
    {{ recency_days('max(case when is_revenue then order_date end)', reference_date) }} as recency_days
{%- endmacro %}

{#- Recency: days from the latest revenue order's date to the reference date (null without one).
    customer_360 counts it again each run from the latest order date it keeps. -#}
{% macro recency_days(last_revenue_order_date, reference_date) -%}
    cast({{ dbt.datediff(last_revenue_order_date, reference_date, 'day') }} as integer)
{%- endmacro %}

{#- Spend per product category: one row per group of `partition_by` (columns of `orders`) and
    category, over the valid lines of the group's revenue orders: category_amount (their net
    amount), gross_amount, discount_amount and units. The lines are summed straight into their
    group: every measure is an exact sum, so that equals summing per order first, which cost
    PostgreSQL a sort of every line by order and a merge join back to the orders (4.4 s of
    customer_360's 6.6 s at 10,000 customers). For one reference date (customer_360) or the few
    dates of an incremental feature build; on every date at once, see
    revenue_category_spend_spans. -#}
{% macro revenue_category_spend(orders, order_lines, products, partition_by) -%}
    select
        {%- for column in partition_by %}
        {{ orders }}.{{ column }},
        {%- endfor %}
        {{ products }}.category,
        sum({{ order_lines }}.net_amount) as category_amount,
        sum({{ order_lines }}.gross_amount) as gross_amount,
        sum({{ order_lines }}.discount_amount) as discount_amount,
        sum({{ order_lines }}.quantity) as units
    from {{ orders }}
    inner join {{ order_lines }}
        on {{ orders }}.order_id = {{ order_lines }}.order_id
    inner join {{ products }}
        on {{ order_lines }}.sku = {{ products }}.sku
    where {{ orders }}.is_revenue
        and {{ order_lines }}.is_valid
    group by
        {%- for column in partition_by %}
        {{ orders }}.{{ column }},
        {%- endfor %}
        {{ products }}.category
{%- endmacro %}

{#- revenue_category_spend on every day at once, as spans: for each customer and category, the
    sums over the revenue orders known on a day, one row per stretch of days over which they hold,
    with known_from and known_until (exclusive, null while current) as the order spans of `spans`
    (orders_as_known) have them, and revenue_orders, how many revenue orders with lines in the
    category are known then (stretches with none are left out). A reader joins its dates on the
    spans (spans_known_on) and gets, per date, customer and category, the sums
    revenue_category_spend gives over the orders known on that date. Running totals over the days
    orders start or stop being known as revenue, because joining every order to every date that
    knows it costs dates × orders: the feature snapshots' full build at 100,000 customers grouped
    64M order and date rows into 16.5M groups, and spilled 21 GB to disk on DuckDB and ~30 GB on
    PostgreSQL. A span's start adds its order's spend, its end takes it away again; the days where
    nothing changes in sum (one status span ending where the next begins) leave no row. -#}
{% macro revenue_category_spend_spans(spans, order_lines, products) -%}
    {%- set measures = ['revenue_orders', 'category_amount', 'gross_amount', 'discount_amount', 'units'] %}
    select *
    from (
        select
            customer_id,
            category,
            known_from,
            lead(known_from) over (partition by customer_id, category order by known_from) as known_until,
            {%- for measure in measures %}
            sum({{ measure }}) over (
                partition by customer_id, category order by known_from rows between unbounded preceding and current row
            ) as {{ measure }}{% if not loop.last %},{% endif %}
            {%- endfor %}
        from (
            select
                customer_id,
                category,
                changed_on as known_from,
                {%- for measure in measures %}
                sum({{ measure }}) as {{ measure }}{% if not loop.last %},{% endif %}
                {%- endfor %}
            from (
                -- Each revenue span's order spend twice: added on its first day, taken away on the
                -- day after its last (none while it lasts).
                select
                    revenue_spans.customer_id,
                    order_category_spend.category,
                    case when change.sign = 1 then revenue_spans.known_from else revenue_spans.known_until end
                        as changed_on,
                    change.sign as revenue_orders,
                    {%- for measure in measures[1:] %}
                    change.sign * order_category_spend.{{ measure }} as {{ measure }}{% if not loop.last %},{% endif %}
                    {%- endfor %}
                from {{ spans }} as revenue_spans
                inner join ({{ order_category_spend(order_lines, products, spans) }}) as order_category_spend
                    on revenue_spans.order_id = order_category_spend.order_id
                cross join (values (1), (-1)) as change (sign)
                where revenue_spans.is_revenue
                    and (change.sign = 1 or revenue_spans.known_until is not null)
            ) as spend_changes
            group by 1, 2, 3
            having {% for measure in measures %}sum({{ measure }}) <> 0{% if not loop.last %} or {% endif %}{% endfor %}
        ) as daily_spend_changes
    ) as running_spend
    where revenue_orders > 0
{%- endmacro %}

{#- The valid lines of `order_lines` of the orders in `orders` (a relation with order_id) summed per
    order and product category (`products` gives an SKU's category): order_id, category,
    category_amount (net), gross_amount, discount_amount and units. The orders are those of a full
    build's batch of customers (macro feature_batch_rows): their lines only are summed. -#}
{% macro order_category_spend(order_lines, products, orders) -%}
    select
        {{ order_lines }}.order_id,
        {{ products }}.category,
        sum({{ order_lines }}.net_amount) as category_amount,
        sum({{ order_lines }}.gross_amount) as gross_amount,
        sum({{ order_lines }}.discount_amount) as discount_amount,
        sum({{ order_lines }}.quantity) as units
    from {{ order_lines }}
    inner join {{ products }}
        on {{ order_lines }}.sku = {{ products }}.sku
    where {{ order_lines }}.is_valid
        and {{ order_lines }}.order_id in (select order_id from {{ orders }} as orders_of_lines)
    group by 1, 2
{%- endmacro %}

{#- Per group of `partition_by` in `category_spend` (rows of revenue_category_spend: one per group
    and category): the favourite category, the one with the largest net amount, ties to the
    alphabetically first, with favourite_category_share, its part of the group's net amount; and
    the group's mix over its categories: distinct_categories and the sums of gross_amount,
    discount_amount and units. One pass over the rows, windowed per group: a second query over the
    same rows made PostgreSQL materialise them, and the feature snapshots' full build at 100,000
    customers has 15.5M date, customer and category rows (written to disk, then read twice). -#}
{% macro category_summary(category_spend, partition_by) -%}
    {{ return(adapter.dispatch('category_summary')(category_spend, partition_by)) }}
{%- endmacro %}

{% macro default__category_summary(category_spend, partition_by) -%}
    {%- set groups = partition_by | join(', ') -%}
    select distinct on ({{ groups }})
        {{ groups }},
        category as favourite_category,
        case when sum(category_amount) over per_group > 0
            then category_amount / sum(category_amount) over per_group
        end as favourite_category_share,
        count(*) over per_group as distinct_categories,
        sum(gross_amount) over per_group as gross_amount,
        sum(discount_amount) over per_group as discount_amount,
        sum(units) over per_group as units
    from {{ category_spend }}
    window per_group as (partition by {{ groups }})
    order by {{ groups }}, category_amount desc, category
{%- endmacro %}

{#- Spark SQL has no `distinct on`: the same windows, with each group's categories ranked in one
    more, and the first kept. `nulls last` as PostgreSQL and DuckDB sort a null category. -#}
{% macro spark__category_summary(category_spend, partition_by) -%}
    {%- set groups = partition_by | join(', ') -%}
    select
        {{ groups }},
        favourite_category,
        favourite_category_share,
        distinct_categories,
        gross_amount,
        discount_amount,
        units
    from (
        select
            {{ groups }},
            category as favourite_category,
            case when sum(category_amount) over per_group > 0
                then {{ decimal_ratio('category_amount', 'sum(category_amount) over per_group') }}
            end as favourite_category_share,
            count(*) over per_group as distinct_categories,
            sum(gross_amount) over per_group as gross_amount,
            sum(discount_amount) over per_group as discount_amount,
            sum(units) over per_group as units,
            row_number() over (partition by {{ groups }} order by category_amount desc, category nulls last) as category_rank
        from {{ category_spend }}
        window per_group as (partition by {{ groups }})
    ) as ranked_categories
    where category_rank = 1
{%- endmacro %}
