{#- The incremental feature models (customer_feature_snapshots, customer_purchase_summary,
    training_labels) keep one row per customer and feature date. A run builds the dates they do not
    hold yet for every customer, and every date of the customers changed_customers names; the rest
    stay as built. Dates that are no longer feature dates (the previous run's as-of date, unless a
    period end) and rows of changed customers that this run did not write again leave after the
    insert (delete_stale_feature_dates, delete_unwritten_rows_of_changes). -#}

{#- The CTE an incremental feature model reads its new dates from: `dates_to_build` (dates of
    `dates_relation` matching `dates_condition` that the model does not hold, plus any dates the
    model adds in `stale_dates`, a query on {{ this }}). Renders nothing on a full build. -#}
{% macro feature_work_ctes(dates_relation, dates_condition='true', stale_dates=none) -%}
    {%- if builds_on_this() %}
dates_to_build as (
    select as_of_date from {{ dates_relation }}
    where {{ dates_condition }}
        and not exists (select 1 from {{ this }} as built where built.as_of_date = {{ dates_relation }}.as_of_date)
    {%- if stale_dates %}
    union
    {{ stale_dates }}
    {%- endif %}
),
    {%- endif %}
{%- endmacro %}

{#- The joins `in_feature_work` tests, on the (date, customer) of the rows a query reads: placed
    after its FROM and other joins. Joins, not `in (subquery) or in (subquery)`: PostgreSQL cannot
    turn an OR of subqueries into joins, and evaluates a subquery whose result would not fit in
    work_mem (a catch-up day's tens of thousands of changed customers) by scanning it again for
    every row read. The changed customers are joined as the table itself, analyzed, not through a
    CTE: PostgreSQL materialises a CTE read more than once and, knowing nothing of its values, took
    each of 166,076 changed customers to match a thousand contacts (170M rows planned for 206k at
    100,000 customers; joined as the table, 206k). The customers whose features changed, or with
    `labels` (training_labels) every changed customer. Nothing on a full build. -#}
{% macro feature_work_joins(date_column, customer_column, labels=false) -%}
    {%- if builds_on_this() %}
    left join dates_to_build as new_feature_dates
        on {{ date_column }} = new_feature_dates.as_of_date
    left join {{ ref('changed_customers') }} as changed_feature_customers
        on {{ customer_column }} = changed_feature_customers.customer_id
        {%- if not labels %}
        and changed_feature_customers.features_changed
        {%- endif %}
    {%- endif %}
{%- endmacro %}

{#- The rows of `spans` (a model or CTE of spans with customer_id, known_from and known_until:
    orders_as_known, tickets_as_known, revenue_category_spend_spans) known on each feature date
    this run builds: on the dates not built yet, every span known then; on the others, the spans
    of the customers whose features changed. On a full build, the spans of the statement's batch
    of customers (feature_batch_rows). Each row is the date's as_of_date and the span's
    columns. Two joins rather than every date's spans filtered after: on PostgreSQL the
    dates-on-spans join is a nested loop, and the earlier dates hold most of them. Reads the CTEs `feature_dates` and (incremental) `dates_to_build`. -#}
{% macro known_in_feature_work(spans) -%}
    {%- if builds_on_this() %}
    {{ spans_known_on('dates_to_build', spans) }}
    union all
    {{ spans_known_on('feature_dates', spans) }}
    {{ held_dates_of_customers_whose_features_changed('known.customer_id') }}
    {%- else %}
    {{ spans_known_on('feature_dates', feature_batch_rows(spans)) }}
    {%- endif %}
{%- endmacro %}

{#- Placed after a query's joins of `feature_dates` with its rows: keeps the rows of the dates this
    run does not build for everyone (`dates_to_build`) whose customer (`customer_column`) had its
    features changed. -#}
{% macro held_dates_of_customers_whose_features_changed(customer_column) -%}
    inner join {{ ref('changed_customers') }} as changed_feature_customers
        on {{ customer_column }} = changed_feature_customers.customer_id
        and changed_feature_customers.features_changed
    where feature_dates.as_of_date not in (select as_of_date from dates_to_build)
{%- endmacro %}

{#- The rows of `records` (a CTE of CRM records keyed by crm_id: contact versions, interactions,
    campaign members) known on each feature date this run builds, with their customer (the CTE
    `crm_customers`): on the dates not built yet, every record known then; on the others, the
    records of the customers whose features changed, picked before they meet the dates (joined
    to every date first and filtered after, 11M rows at 100,000 customers for a few thousand
    customers' 30,000). A record is known on a date when each of `known_by` (SQL on `records`'
    columns) is on or before it. Each row: as_of_date, customer_id and the record's `columns`. -#}
{% macro crm_records_in_feature_work(records, columns, known_by) -%}
    {%- if builds_on_this() %}
    {{ _crm_records_known_on('dates_to_build', records, columns, known_by) }}
    union all
    {{ _crm_records_known_on('feature_dates', records, columns, known_by) }}
    {{ held_dates_of_customers_whose_features_changed('crm_customers.customer_id') }}
    {%- else %}
    {{ _crm_records_known_on('feature_dates', records, columns, known_by) }}
    {%- endif %}
{%- endmacro %}

{% macro _crm_records_known_on(dates, records, columns, known_by) -%}
    select
        {{ dates }}.as_of_date,
        crm_customers.customer_id,
        {%- for column in columns %}
        {{ records }}.{{ column }}{% if not loop.last %},{% endif %}
        {%- endfor %}
    from {{ records }}
    inner join crm_customers
        on {{ records }}.crm_id = crm_customers.crm_id
    inner join {{ dates }}
        on {% for known in known_by %}{{ known }} <= {{ dates }}.as_of_date{% if not loop.last %} and {% endif %}{% endfor %}
{%- endmacro %}

{#- Whether a row of a query with `feature_work_joins` is part of this run's work: a date not built
    yet, or a changed customer. Always on a full build. -#}
{% macro in_feature_work() -%}
    {%- if builds_on_this() -%}
    (new_feature_dates.as_of_date is not null or changed_feature_customers.customer_id is not null)
    {%- else -%}
    true
    {%- endif -%}
{%- endmacro %}

{#- Post-hook: rows on dates the model no longer keeps (`dates_condition` on feature_dates).
    Nothing after a full build. -#}
{% macro delete_stale_feature_dates(dates_condition='true') -%}
    {%- if builds_on_this() %}
    delete from {{ this }}
    where as_of_date not in (select as_of_date from {{ ref('feature_dates') }} where {{ dates_condition }})
    {%- endif %}
{%- endmacro %}

{#- Post-hook of an incremental model redoing what a list of changes names (`changed_model`, one
    row per `changed_key`, the model's `key`): rows of those keys this run did not write again (a
    date where a changed customer is no longer known, a key identity retired, an order no longer a
    basket). Rows from before `_built_at` existed count as unwritten. A statement of its own, not an
    OR beside the dates': PostgreSQL turns `in (subquery)` into a join only when it stands alone,
    and rescans the subquery for every row once a catch-up day's changed customers outgrow
    work_mem. -#}
{% macro delete_unwritten_rows_of_changes(changed_model, key, changed_key, condition='true') -%}
    {%- if builds_on_this() %}
    delete from {{ this }}
    where (_built_at is null or _built_at < {{ built_at() }})
        and {{ key }} in (select {{ changed_key }} from {{ ref(changed_model) }} where {{ condition }})
    {%- endif %}
{%- endmacro %}

{#- The post-hook above for a model of customers: those changed_customers names whose features
    changed, or (`labels`, training_labels) every one of them. -#}
{% macro delete_unwritten_rows_of_changed_customers(labels=false) -%}
    {{ delete_unwritten_rows_of_changes('changed_customers', 'customer_id', 'customer_id',
                                        'true' if labels else 'features_changed') }}
{%- endmacro %}

{#- The documented columns of model `model_name` (its YAML, in order) but `_built_at`, each prefixed
    by `alias`: a model reading an incremental feature table leaves out its bookkeeping. From the
    project's graph, not the database. While parsing, and in a unit test (its context has no graph),
    it is `alias.*`. -#}
{% macro feature_columns_of(model_name, alias) -%}
    {%- set node = model_node(model_name) -%}
    {%- if node is none -%}
    {{ alias }}.*
    {%- else -%}
    {%- for column in node.columns if column != '_built_at' -%}
    {{ alias }}.{{ column }}{% if not loop.last %},
        {% endif %}
    {%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{#- The project's node of model `model_name` (its schema, its documented columns), from the graph;
    none while parsing and in a unit test, whose context has no graph. -#}
{% macro model_node(model_name) -%}
    {%- set nodes = graph.get('nodes', {}).values() if execute else [] -%}
    {%- do return(nodes | selectattr('resource_type', 'equalto', 'model') | selectattr('name', 'equalto', model_name) | first | default(none)) -%}
{%- endmacro %}

{#- An incremental run on a table already built; false in a unit test, which has no `this`. -#}
{% macro builds_on_this() -%}
    {%- do return(this is not none and is_incremental()) -%}
{%- endmacro %}

{#- A full build of a feature model writes its customers a batch at a time: every feature is one
    customer's on one date, so each batch is the same query on fewer customers. The model's own
    statement builds the first batch, and `insert_later_feature_batches` (its first post-hook) runs
    the same SQL again for each next one. In one statement a million customers' category running
    totals alone spilled 16.6 GB on DuckDB, and the whole query filled a 35 GB disk. A batch is the
    customers whose key (an md5 in hex) starts with one of a set of hex digits; as many batches as
    var feature_customers_per_statement (default 50,000) asks, at most 16. An incremental build
    writes the few dates and customers that changed in one statement. -#}
{% macro feature_batch_condition(customer_column) -%}
    {%- set batches = feature_batches() -%}
    {%- if batches > 1 -%}
    substr({{ customer_column }}, 1, 1) in {{ _feature_batch_digits(1, batches) }}
    {%- else -%}
    true
    {%- endif -%}
{%- endmacro %}

{#- `relation` (with a customer_id column) cut to this statement's batch of customers. -#}
{% macro feature_batch_rows(relation) -%}
    (select * from {{ relation }} as batch_source where {{ feature_batch_condition('batch_source.customer_id') }})
{%- endmacro %}

{#- How many statements a full build of a feature model writes its customers in; 1 on an incremental
    build, while parsing and in a unit test. Counted at each batch condition the model renders (a
    handful; 0.2-0.5 s each at a million customers on DuckDB): a macro keeps no state between calls. -#}
{% macro feature_batches() -%}
    {%- if not execute or this is none or builds_on_this() -%}
        {%- do return(1) -%}
    {%- endif -%}
    {%- set customers = run_query('select count(distinct customer_id) from ' ~ ref('int_customer_identity')).columns[0].values()[0] | int -%}
    {%- set per_statement = var('feature_customers_per_statement', 50000) | int -%}
    {%- do return([16, [1, (customers + per_statement - 1) // per_statement] | max] | min) -%}
{%- endmacro %}

{#- The hex digits starting the keys of batch `batch` (1-based) of `batches`, as a SQL list marked so
    the post-hook finds it. -#}
{% macro _feature_batch_digits(batch, batches) -%}
    {%- set digits = [] -%}
    {%- for position in range(16) if position * batches // 16 == batch - 1 -%}
        {%- do digits.append("'" ~ '0123456789abcdef'[position] ~ "'") -%}
    {%- endfor -%}
    ({{ digits | join(', ') }}) {{ _feature_batch_mark(batch) }}{{ batches }} */
{%- endmacro %}

{#- The start of batch `batch`'s mark, which ends with the number of batches: the post-hook reads it. -#}
{% macro _feature_batch_mark(batch) -%}
    {%- do return('/* feature batch ' ~ batch ~ ' of ') -%}
{%- endmacro %}

{#- Post-hook: after a full build wrote the first batch of customers, the later batches, each its own
    insert (a statement's joins and spills are freed when it ends). The SQL is the model's compiled
    code with every batch condition moved on; a compiled code without the first batch's mark is
    an incremental run or a build of one batch, which has nothing to add. Renders no SQL itself:
    it runs when dbt renders it, after the table was built, inside the model's transaction. -#}
{% macro insert_later_feature_batches() -%}
    {#- The number of batches is the one the statement was built with, read from its mark (after a
        first build the table exists now, so builds_on_this cannot tell a batched build). -#}
    {%- set mark = _feature_batch_mark(1) -%}
    {%- if execute and mark in (compiled_code or '') -%}
        {%- set batches = compiled_code.split(mark)[1].split(' */')[0] | int -%}
        {%- set first_batch = _feature_batch_digits(1, batches) -%}
        {%- for batch in range(2, batches + 1) -%}
            {%- do run_query('insert into ' ~ this ~ ' select * from (' ~ compiled_code.replace(first_batch, _feature_batch_digits(batch, batches)) ~ ') as batch_rows') -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
