{#- The latest version of each record among the raw versions of `relation` (a CTE or relation name).

    key_columns:   list of the record's key columns.
    newest_first:  list of ORDER BY terms ranking versions newest first, the source's own
                   timestamp first (e.g. ['updated_at desc']); may be empty for sources without one.

    Ties on the source timestamp go to a tombstone (a SQL record hard-deleted in the source gets one,
    copying the last version's columns), then to the latest delivery and load. The relation must
    carry `_is_deleted`, `_delivery_date` and `_loaded_at`; the caller drops `_is_deleted` rows. -#}
{% macro latest_version(relation, key_columns, newest_first) -%}
    {%- set keys = key_columns | join(', ') -%}
    select distinct on ({{ keys }}) *
    from {{ relation }}
    order by {{ keys }},
        {%- for term in newest_first %} {{ term }},{% endfor %}
        _is_deleted desc, _delivery_date desc, _loaded_at desc
{%- endmacro %}
