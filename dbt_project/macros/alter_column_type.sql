{#- An incremental model whose column changes type (`on_schema_change: sync_all_columns`) has that
    column converted in place. dbt's own version assigns the old values to the new column without a
    cast, which PostgreSQL refuses for the conversions it only makes when asked: text to uuid, raw's
    hex version hashes once held as uuids. Otherwise the same steps (a column of the new type
    beside the old, filled, then renamed over it). -#}
{% macro postgres__alter_column_type(relation, column_name, new_column_type) -%}
    {%- set converted = column_name ~ '__dbt_alter' -%}
    {% call statement('alter_column_type') %}
        alter table {{ relation.render() }} add column {{ adapter.quote(converted) }} {{ new_column_type }};
        update {{ relation.render() }} set {{ adapter.quote(converted) }} = cast({{ adapter.quote(column_name) }} as {{ new_column_type }});
        alter table {{ relation.render() }} drop column {{ adapter.quote(column_name) }} cascade;
        alter table {{ relation.render() }} rename column {{ adapter.quote(converted) }} to {{ adapter.quote(column_name) }}
    {% endcall %}
{%- endmacro %}
