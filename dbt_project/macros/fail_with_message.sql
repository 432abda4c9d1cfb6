{#- A text expression that stops the query with `message_sql` (a SQL text expression) in its error
    when evaluated: put it in a CASE branch only the rows breaking a promise reach. The message
    must not be a constant, or PostgreSQL, which folds constants while planning, fails every run. -#}
{% macro fail_with_message(message_sql) -%}
    {{ return(adapter.dispatch('fail_with_message')(message_sql)) }}
{%- endmacro %}

{#- No raising function in plain SQL: the message's failed cast to integer carries it ("invalid input
    syntax for type integer: <message>"). -#}
{% macro default__fail_with_message(message_sql) -%}
    cast(cast(({{ message_sql }}) as integer) as {{ dbt.type_string() }})
{%- endmacro %}

{% macro duckdb__fail_with_message(message_sql) -%}
    cast(error({{ message_sql }}) as {{ dbt.type_string() }})
{%- endmacro %}

{#- Spark's raise_error stops the query with the message as it is. -#}
{% macro spark__fail_with_message(message_sql) -%}
    cast(raise_error({{ message_sql }}) as {{ dbt.type_string() }})
{%- endmacro %}
