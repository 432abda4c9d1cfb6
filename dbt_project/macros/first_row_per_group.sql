{#- The first row of each group of `partition_by` in `relation` (a CTE or relation name) in the
    order of `order_by` (a list of ORDER BY terms that break every tie): all its columns.
    PostgreSQL and DuckDB keep it with `distinct on`; Spark SQL has no `distinct on`, so there the
    rows are ranked in a window and the result also holds that rank, `_group_rank`. Ascending terms
    put nulls last on PostgreSQL and DuckDB but first on Spark: a term over a nullable column says
    `nulls last` itself. -#}
{% macro first_row_per_group(relation, partition_by, order_by) -%}
    {{ return(adapter.dispatch('first_row_per_group')(relation, partition_by, order_by)) }}
{%- endmacro %}

{% macro default__first_row_per_group(relation, partition_by, order_by) -%}
    select distinct on ({{ partition_by | join(', ') }}) *
    from {{ relation }}
    order by {{ (partition_by + order_by) | join(', ') }}
{%- endmacro %}

{% macro spark__first_row_per_group(relation, partition_by, order_by) -%}
    select *
    from (
        select
            grouped.*,
            row_number() over (partition by {{ partition_by | join(', ') }} order by {{ order_by | join(', ') }}) as _group_rank
        from {{ relation }} as grouped
    ) as ranked
    where _group_rank = 1
{%- endmacro %}
