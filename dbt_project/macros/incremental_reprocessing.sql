{#- Incremental facts are rebuilt by load: a run redoes every row loaded since the table was last
    built (`loaded_at`, raw's `_loaded_at`, or `_built_at` of a fact read as input, after this
    table's newest `_built_at`). That covers a new day, a rerun of a recent day, a row delivered
    today for an old event and a backfill of a missed day alike: each is loaded anew. An empty
    table, or one built before `_built_at` existed, counts as holding nothing: everything is
    redone. var reprocessing_window_days (default 0) also redoes the rows delivered within that
    many days of the latest delivery the table holds, for a team that wants a safety margin. It
    was 3 by default: every day then redid three days of deliveries besides its own, and the first
    day after a catch-up load redid that whole load (the facts, and every feature of every
    customer they touched, at 100,000 customers; on PostgreSQL the facts' files doubled). -#}
{% macro in_reprocessing_window(relation_alias=none, loaded_at='_loaded_at') -%}
    {%- set prefix = relation_alias ~ '.' if relation_alias else '' -%}
    {%- set window_days = var('reprocessing_window_days', 0) | int -%}
    ({{ changed_since_this_was_built(prefix ~ loaded_at) }}
    {%- if window_days > 0 %}
    or {{ prefix }}_delivery_date >= (
        select coalesce(
            cast({{ dbt.dateadd('day', -window_days, 'max(_delivery_date)') }} as date),
            cast('1900-01-01' as date)
        )
        from {{ this }}
    )
    {%- endif %})
{%- endmacro %}

{#- Keys of rows already built whose customer_id no longer matches identity resolution: a new
    link can merge two customers, changing the customer of records delivered long ago. Rebuilt
    with the window's rows, they keep an incremental run equal to a full refresh. -#}
{% macro keys_with_stale_customer(key_column, identity_relation, source_table, source_key_column=none) -%}
    select built.{{ key_column }}
    from {{ this }} as built
    left join {{ identity_relation }} as identity
        on identity.source_table = '{{ source_table }}'
        and identity.source_key = cast(built.{{ source_key_column or key_column }} as {{ dbt.type_string() }})
    where built.customer_id is distinct from identity.customer_id
{%- endmacro %}

{#- Post-hook of an incremental fact: delete rows whose record is gone from staging (a hard delete
    in the source arrives as a tombstone, which staging leaves out). Nothing to do after a full
    refresh, which builds from staging: the hook renders empty and dbt skips it.

    With `versions_relation` (the raw versions staging keeps the latest of, keyed by `key_columns`),
    only the rows of records with a version loaded after this table's previous build are looked up:
    staging drops a record in the run that loads its tombstone (macros/incremental_staging.sql),
    before this table's build, and a version loaded after the previous build of this table is
    what that run read. Every row is looked up when raw was reloaded from scratch (no version
    loaded before that build), as staging does, since a record the reload lost has no version at
    all. Looking every row up cost most of fct_order_lines' steady day on PostgreSQL (a table then): two scans of
    the whole table and a hash of the whole staging table each (2.1 s of its 2.8 s at 10,000
    customers). One uncorrelated `in` over staging's keys_loaded_since_previous_build: with the
    reload's case beside it in an OR, PostgreSQL read the recent versions again for every row
    (43 s). The bound holds when this table is built after its staging, in one run, as `dbt build`
    and the DAG do; built alone by hand between a load and staging's build, it misses the records
    that load deleted until a full refresh. -#}
{% macro delete_rows_missing_from(staging_relation, key_columns, versions_relation=none) -%}
    {%- if is_incremental() %}
    delete from {{ this }}
    where not exists (
        select 1
        from {{ staging_relation }} as staged
        where {% for key in key_columns %}staged.{{ key }} = {{ this }}.{{ key }}{% if not loop.last %} and {% endif %}{% endfor %}
    )
    {%- if versions_relation %}
        and ({{ key_columns | join(', ') }}) in (
            {{ keys_loaded_since_previous_build(versions_relation, key_columns) }}
        )
    {%- endif %}
    {%- endif %}
{%- endmacro %}

{#- When this dbt invocation started, stamped on every row an incremental fact writes: publish copies
    to BI only the rows written since its last copy (warehouse/publish.py). -#}
{% macro built_at() -%}
    {{ timestamp_literal(run_started_at) }}
{%- endmacro %}

{#- The customers holding an identifier (CRM id, email) of an order, ticket or CRM contact deleted in
    the source, its tombstone loaded when `loaded_since` (a condition on `_loaded_at`) holds. A
    record belongs to a customer through an identifier it shares, so whoever holds one now is the
    customer it was taken from; a customer left with no record is gone from identity altogether.
    The deleted record's identifiers come from its earlier versions. -#}
{% macro customers_sharing_identifiers_with_deleted_records(loaded_since) -%}
    {#- The deleted records' few identifiers first, then each holder table filtered by them: joined
        to the union of every holder's identifiers instead, PostgreSQL built that union whole
        (392,649 rows for one deleted order at 10,000 customers, 0.5 s of a 5 s kpi_daily_sales). -#}
    with deleted_order_ids as (
        select order_id from {{ ref('stg_sales__order_versions') }} where _is_deleted and {{ loaded_since }}
    ),

    deleted_ticket_ids as (
        select ticket_id from {{ ref('stg_service__ticket_versions') }} where _is_deleted and {{ loaded_since }}
    ),

    deleted_crm_ids as (
        select crm_id from {{ ref('stg_crm__customer_versions') }} where _is_deleted and {{ loaded_since }}
    ),

    deleted_crm_id_identifiers as (
        {{ crm_ids_of_versions('deleted_order_ids', 'deleted_crm_ids') }}
    ),

    deleted_email_identifiers as (
        {{ emails_of_versions('deleted_order_ids', 'deleted_ticket_ids', 'deleted_crm_ids') }}
    )

    select customer_id from {{ ref('fct_orders') }}
    where crm_id in (select crm_id from deleted_crm_id_identifiers)
    union all
    select customer_id from {{ ref('fct_orders') }}
    where customer_email in (select email from deleted_email_identifiers)
    union all
    select customer_id from {{ ref('fct_tickets') }}
    where requester_email in (select email from deleted_email_identifiers)
    union all
    select customer_id from {{ ref('int_customer_identity') }}
    where source_table = 'customers' and source_key in (select crm_id from deleted_crm_id_identifiers)
    union all
    select identity.customer_id
    from {{ ref('stg_crm__customer_versions') }} as versions
    inner join {{ ref('int_customer_identity') }} as identity
        on identity.source_table = 'customers'
        and identity.source_key = versions.crm_id
    where versions.email in (select email from deleted_email_identifiers)
{%- endmacro %}

{#- The CRM ids (as crm_id) and the valid emails (as email) any version of the named records held:
    each argument a relation or CTE with the records' keys (order_id, ticket_id, crm_id). -#}
{% macro crm_ids_of_versions(order_ids, crm_ids) -%}
        select crm_id from {{ ref('stg_sales__order_versions') }}
        where crm_id is not null and order_id in (select order_id from {{ order_ids }})
        union
        select crm_id from {{ crm_ids }}
{%- endmacro %}

{% macro emails_of_versions(order_ids, ticket_ids, crm_ids) -%}
        select customer_email as email from {{ ref('stg_sales__order_versions') }}
        where is_email_valid and order_id in (select order_id from {{ order_ids }})
        union
        select requester_email from {{ ref('stg_service__ticket_versions') }}
        where is_email_valid and ticket_id in (select ticket_id from {{ ticket_ids }})
        union
        select email from {{ ref('stg_crm__customer_versions') }}
        where is_email_valid and crm_id in (select crm_id from {{ crm_ids }})
{%- endmacro %}
