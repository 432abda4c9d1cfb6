{#- The CRM contact versions current on each date of `dates` (a relation with an as_of_date
    column): the latest version of each contact by the CRM's modification time among those
    delivered by that date; a contact whose latest known version is a tombstone is left out. One
    row per date and crm_id: as_of_date, crm_id, the version's `columns`, modified_at,
    _version_hash, is_deleted, known_from and known_until (see versions_known_on).

    crm_versions: stg_crm__customer_versions, or the caller's CTE reading it.
    columns:      the list of the version's columns the caller needs beside crm_id. -#}
{% macro current_crm_contacts(dates, crm_versions, columns) -%}
    {%- set contact_versions -%}
    (
        select
            crm_id,
            {%- for column in columns %}
            {{ column }},
            {%- endfor %}
            modified_at,
            _version_hash,
            _is_deleted as is_deleted,
            _delivery_date as known_from
        from {{ crm_versions }}
    ) as contact_versions
    {%- endset -%}
    {{ versions_known_on(dates, contact_versions, ['crm_id'], ['modified_at', 'is_deleted', 'known_from', '_version_hash']) }}
{%- endmacro %}
