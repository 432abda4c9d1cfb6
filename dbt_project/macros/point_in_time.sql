{#- Point in time: a run for day D loads what the sources hold at the end of D and stamps every
    row it loads, file or SQL, with _delivery_date D; a version is known from its _delivery_date. -#}

{#- The versions of `versions` with the day each stopped being the latest known, `known_until`
    (exclusive; null while it still is): the earliest known_from among the record's newer
    versions, since deliveries need not come in the versions' order. A version whose known_until is
    not after its known_from was never the latest on any day.

    versions:     a relation with the records' versions and a column `known_from` (the first day
                  the version was known).
    oldest_first: ORDER BY terms ranking a record's versions oldest first. -#}
{% macro version_spans(versions, key_columns, oldest_first) -%}
    select
        *,
        min(known_from) over (
            partition by {{ key_columns | join(', ') }}
            order by {{ oldest_first | join(', ') }}
            rows between 1 following and unbounded following
        ) as known_until
    from {{ versions }}
{%- endmacro %}

{#- Whether the span of row `alias` (columns known_from and known_until, see version_spans) holds
    the date `date`. -#}
{% macro is_known_on(date, alias) -%}
    {{ alias }}.known_from <= {{ date }}
        and ({{ alias }}.known_until is null or {{ alias }}.known_until > {{ date }})
{%- endmacro %}

{#- Each date of `dates` (a relation with an as_of_date column) with every row of `spans` (a
    relation with known_from and known_until) whose span holds it, as `known`: one row per date and
    span, the date's as_of_date with the span's columns. Ends with the join's condition, so a caller
    can add joins and a where clause. -#}
{% macro spans_known_on(dates, spans) -%}
    select
        {{ dates }}.as_of_date,
        known.*
    from {{ dates }}
    inner join {{ spans }} as known
        on {{ is_known_on(dates ~ '.as_of_date', 'known') }}
{%- endmacro %}

{#- For every date of `dates` (a relation with an as_of_date column), the version of each record
    in `versions` that was the latest known on that date: one row per date and record known then,
    the date's as_of_date with the version's columns and known_until. A record whose latest known
    version is a tombstone (`is_deleted`) is left out. Arguments as version_spans'. -#}
{% macro versions_known_on(dates, versions, key_columns, oldest_first) -%}
    {{ spans_known_on(dates, '(' ~ version_spans(versions, key_columns, oldest_first) ~ ')') }}
    where not known.is_deleted
{%- endmacro %}

{#- The run's logical date as a SQL date: var('as_of_date') when given (`dbt --vars`, a unit test's
    overrides), else the environment variable CRMW_AS_OF_DATE, which the DAG and the benchmark set
    for each run. A changed var makes dbt parse the whole project again (~6 s here, every day); a
    changed environment variable only the few files that use it. Neither: 2099-12-31, i.e. all
    that is known. -#}
{% macro as_of_date_sql() -%}
    cast('{{ var("as_of_date", none) or env_var("CRMW_AS_OF_DATE", "2099-12-31") }}' as date)
{%- endmacro %}
