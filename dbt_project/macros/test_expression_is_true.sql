{#- Generic test: fails on every row of the model where `expression` is not true.

    Arguments:
      expression: a SQL boolean expression over the model's columns, e.g. 'valid_from < valid_to'.
                  Declared on a column, the expression continues the column's name: '>= 0' on
                  column amount checks 'amount >= 0'.
    A null result fails: wrap nullable columns in coalesce(), or restrict the rows checked with
    dbt's own `config: {where: ...}`. -#}
{% test expression_is_true(model, expression, column_name=none) %}
select *
from {{ model }}
where not coalesce({{ column_name ~ ' ' if column_name }}{{ expression }}, false)
{% endtest %}
