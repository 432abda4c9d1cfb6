{#- Generic test reconciling row counts: the model's row count must equal the number of distinct
    `compare_key` values in `compare_model` (optionally only its rows meeting `compare_where`).
    Returns one row, with both counts, when they differ. To count only some of the model's rows,
    use dbt's own `config: {where: ...}`.

    Arguments:
      compare_model: the relation to reconcile with, e.g. ref('int_customer_identity').
      compare_key:   column or expression counted distinct there; default: its rows are counted.
      compare_where: optional SQL condition on compare_model's rows.
    Example, a dimension with one row per customer_id of the identity model:
      - row_count_matches:
          arguments: {compare_model: ref('int_customer_identity'), compare_key: customer_id} -#}
{% test row_count_matches(model, compare_model, compare_key=none, compare_where=none) %}
with model_rows as (
    select count(*) as row_count
    from {{ model }}
),

compared_rows as (
    select count({{ 'distinct ' ~ compare_key if compare_key else '*' }}) as row_count
    from {{ compare_model }}
    {%- if compare_where %}
    where {{ compare_where }}
    {%- endif %}
)

select
    model_rows.row_count as model_row_count,
    compared_rows.row_count as compared_row_count
from model_rows
cross join compared_rows
where model_rows.row_count <> compared_rows.row_count
{% endtest %}
