{#- Generic test for a key of several columns: returns each combination of `columns` held by more
    than one row, with how many. Grouping by the columns themselves, not by one string joined from
    them, spares a cast and a concatenation per row and cannot confuse ('a|b', 'c') with
    ('a', 'b|c').

    Arguments:
      columns: list of the key's columns, e.g. [customer_id, as_of_date].
    Example:
      - unique_key:
          arguments: {columns: [order_id, line_number]} -#}
{% test unique_key(model, columns) %}
select
    {{ columns | join(', ') }},
    count(*) as row_count
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
