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
    cast({{ dbt.datediff('max(case when is_revenue then order_date end)', reference_date, 'day') }} as integer)
        as recency_days
{%- endmacro %}

{#- Spend per product category: one row per group of `partition_by` (columns of `orders`) and
    category, over the valid lines of the group's revenue orders: category_amount (their net
    amount), gross_amount, discount_amount and units. Those orders' lines are summed per order and
    category first, then per group: the feature snapshots repeat an order on every feature date
    that knows it, and joining the lines before grouping made their full build aggregate some 140M
    line rows into 16.5M groups at 100,000 customers (spilling 21 GB to disk). -#}
{% macro revenue_category_spend(orders, order_lines, products, partition_by) -%}
    select
        {%- for column in partition_by %}
        {{ orders }}.{{ column }},
        {%- endfor %}
        order_category_spend.category,
        sum(order_category_spend.category_amount) as category_amount,
        sum(order_category_spend.gross_amount) as gross_amount,
        sum(order_category_spend.discount_amount) as discount_amount,
        sum(order_category_spend.units) as units
    from {{ orders }}
    inner join (
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
            and {{ order_lines }}.order_id in (select order_id from {{ orders }} where is_revenue)
        group by 1, 2
    ) as order_category_spend
        on {{ orders }}.order_id = order_category_spend.order_id
    where {{ orders }}.is_revenue
    group by
        {%- for column in partition_by %}
        {{ orders }}.{{ column }},
        {%- endfor %}
        order_category_spend.category
{%- endmacro %}

{#- The favourite category of each group of `partition_by` in `category_spend` (rows of
    revenue_category_spend): the one with the largest net amount, ties to the alphabetically first,
    with favourite_category_share, its part of the group's net amount. -#}
{% macro favourite_category(category_spend, partition_by) -%}
    {{ favourite(category_spend, partition_by, 'category', weight='category_amount', with_share=true) }}
{%- endmacro %}
