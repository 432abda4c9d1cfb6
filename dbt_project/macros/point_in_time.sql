{#- Point in time: a run for day D loads what the sources hold at the end of D and stamps every
    row it loads, file or SQL, with _delivery_date D; a version is known from its _delivery_date. -#}

{#- For every date of `dates` (a relation with an as_of_date column), the version of each record
    in `versions` that was the latest known on that date: one row per date and record known then,
    the date's as_of_date with the version's columns. A record whose latest known version is a
    tombstone is left out.

    versions:     a relation with the records' versions and columns `known_from` (the first day
                  the version was known) and `is_deleted` (a tombstone).
    oldest_first: ORDER BY terms ranking a record's versions oldest first.

    A version is the latest known from its known_from until the first day a newer one was known:
    the earliest known_from among the newer versions, since deliveries need not come in the
    versions' order. -#}
{% macro versions_known_on(dates, versions, key_columns, oldest_first) -%}
    select
        {{ dates }}.as_of_date,
        spans.*
    from {{ dates }}
    inner join (
        select
            *,
            min(known_from) over (
                partition by {{ key_columns | join(', ') }}
                order by {{ oldest_first | join(', ') }}
                rows between 1 following and unbounded following
            ) as known_until
        from {{ versions }}
    ) as spans
        on spans.known_from <= {{ dates }}.as_of_date
        and (spans.known_until is null or spans.known_until > {{ dates }}.as_of_date)
    where not spans.is_deleted
{%- endmacro %}
