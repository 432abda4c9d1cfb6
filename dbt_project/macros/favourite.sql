{#- Each group's favourite value: one row per group of `partition_by` in `relation` (a CTE or
    relation name), with the group's columns and `favourite_<value>`, the value whose rows weigh
    the most. Ties go to the alphabetically first value, so the choice is deterministic.

    partition_by: list of the group's columns, e.g. ['customer_id'].
    value:        the column to choose from (e.g. 'channel'); it names the output column.
    weight:       what one row weighs, summed per value: '1' counts rows, 'quantity' counts units. -#}
{% macro favourite(relation, partition_by, value, weight='1') -%}
    {{ return(adapter.dispatch('favourite')(relation, partition_by, value, weight)) }}
{%- endmacro %}

{% macro default__favourite(relation, partition_by, value, weight) -%}
    {%- set groups = partition_by | join(', ') -%}
    select distinct on ({{ groups }})
        {{ groups }},
        {{ value }} as favourite_{{ value }}
    from {{ relation }}
    group by {{ groups }}, {{ value }}
    order by {{ groups }}, sum({{ weight }}) desc, {{ value }}
{%- endmacro %}

{#- Spark SQL has no `distinct on`: each group's values ranked by weight in a window over the
    grouped rows, the first kept. `nulls last` as PostgreSQL and DuckDB sort a null value. -#}
{% macro spark__favourite(relation, partition_by, value, weight) -%}
    {%- set groups = partition_by | join(', ') -%}
    select {{ groups }}, favourite_{{ value }}
    from (
        select
            {{ groups }},
            {{ value }} as favourite_{{ value }},
            row_number() over (partition by {{ groups }} order by sum({{ weight }}) desc, {{ value }} nulls last) as value_rank
        from {{ relation }}
        group by {{ groups }}, {{ value }}
    ) as ranked_values
    where value_rank = 1
{%- endmacro %}
