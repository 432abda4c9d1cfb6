{#- Each group's favourite value: one row per group of `partition_by` in `relation` (a CTE or
    relation name), with the group's columns and `favourite_<value>`, the value whose rows weigh
    the most. Ties go to the alphabetically first value, so the choice is deterministic.

    partition_by: list of the group's columns, e.g. ['customer_id'].
    value:        the column to choose from (e.g. 'channel'); it names the output column.
    weight:       what one row weighs, summed per value: '1' counts rows, 'quantity' counts units. -#}
{% macro favourite(relation, partition_by, value, weight='1') -%}
    {%- set groups = partition_by | join(', ') -%}
    select distinct on ({{ groups }})
        {{ groups }},
        {{ value }} as favourite_{{ value }}
    from {{ relation }}
    group by {{ groups }}, {{ value }}
    order by {{ groups }}, sum({{ weight }}) desc, {{ value }}
{%- endmacro %}
