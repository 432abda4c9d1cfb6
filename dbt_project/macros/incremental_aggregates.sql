{#- Incremental aggregates (the KPI and cohort marts) redo what the facts changed since the aggregate
    was last built: a fact row whose `_built_at`, or a raw version whose `_loaded_at`, is newer than
    this table's newest `_built_at`. An empty table counts as built never, and so does a table built
    before the aggregate was incremental (no `_built_at` column): everything changed. -#}
{% macro changed_since_this_was_built(column) -%}
    {%- if has_column(this, '_built_at') -%}
    {{ column }} > (
        select coalesce(max(_built_at), cast('1900-01-01' as {{ dbt.type_timestamp() }})) from {{ this }}
    )
    {%- else -%}
    true
    {%- endif -%}
{%- endmacro %}

{#- The rows of `relation` (a CTE) that this table does not already hold as they are: an aggregate
    recomputed whole but cheap (a few hundred rows from one pass over a fact) writes, and stamps with
    `_built_at`, only the rows whose figures moved, so publish and the day's tests read those alone.
    EXCEPT compares nulls as equal, as "unchanged" must. Rows built before `_built_at` was stamped
    count as not held: the first incremental run stamps them all. -#}
{% macro rows_changed_from_this(relation, columns) -%}
    select {{ columns | join(', ') }} from {{ relation }}
    {%- if is_incremental() and has_column(this, '_built_at') %}
    except
    select {{ columns | join(', ') }} from {{ this }} where _built_at is not null
    {%- endif %}
{%- endmacro %}

{#- Whether `relation` (an existing table) has `column`: a table an older version built may lack the
    bookkeeping columns a newer one reads. -#}
{% macro has_column(relation, column) -%}
    {{ return(column in adapter.get_columns_in_relation(relation) | map(attribute='name') | map('lower') | list) }}
{%- endmacro %}
