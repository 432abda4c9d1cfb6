{#- Pre-hook of every model: settings of the session that builds it. PostgreSQL compiles a query
    to machine code (JIT) once its estimated cost passes jit_above_cost, and a model's query is
    costed high and holds hundreds of expressions: at 10,000 customers the identity build spent 8.0
    of its 9.1 s compiling 994 functions, and turning JIT off took a steady day's `dbt build` from
    55.5 s to 40.9 s (models 91 s to 65 s of thread time; the tests, simple scans, unchanged). A
    SET, not the server's configuration: the warehouse's owner keeps theirs, and the models' own
    sessions take it. DuckDB has no JIT: nothing to do there. -#}
{% macro session_settings() -%}
    {{ return(adapter.dispatch('session_settings')()) }}
{%- endmacro %}

{% macro default__session_settings() -%}
{%- endmacro %}

{% macro postgres__session_settings() -%}
    set jit = off
{%- endmacro %}
