"""ML feature tables on each engine: they build and pass their tests, the features of a date stay
the same when later deliveries arrive (nothing after the date leaks in), and the training labels
agree with the churn the simulator planted."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from crmw.scratch import load_raw, new_postgres_database
from tests.conftest import DBT_LAST_DAY, DBT_START, ENGINES, dbt_in_process
from warehouse import connect

# Sundays: weekly training snapshots of the later build fall on them.
FIRST_LOAD = DBT_START + dt.timedelta(days=18)
CUT_OFF = DBT_START + dt.timedelta(days=39)
# Weekly snapshots and a two-week churn window, so 60 days of data give several complete labels.
FEATURE_VARS = {"training_snapshot_period": "week", "churn_horizon_days": 14}
FEATURES = "path:models/features"


def _build_features(url: str, as_of: dt.date, tmp_path: Path) -> None:
    """Build the feature models and what they read; then run the feature models' own tests."""
    variables = json.dumps({"as_of_date": as_of.isoformat(), **FEATURE_VARS})
    dbt_in_process(url, "build", "--select", f"+{FEATURES}", "--exclude-resource-type", "test", "unit_test",
                   "--vars", variables, tmp_path=tmp_path)
    dbt_in_process(url, "test", "--select", FEATURES, "--vars", variables, tmp_path=tmp_path)


def _copy_warehouse(url: str, name: str, tmp_path: Path, server_url: str | None) -> str:
    if url.startswith("duckdb"):
        copy = tmp_path / f"{name}.duckdb"
        shutil.copyfile(url[len("duckdb:///"):], copy)
        return f"duckdb:///{copy}"
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as con:
        con.execute(f"drop database if exists {name} with (force)")
        con.execute(f"create database {name} template {urlsplit(url).path.lstrip('/')}")
    return url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module", params=ENGINES)
def warehouses(request: pytest.FixtureRequest, dbt_sources: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two warehouses fed the same deliveries up to CUT_OFF, the later one also those up to the
    last simulated day; features built as of CUT_OFF on the first and of the last day on the
    second."""
    engine = request.param
    tmp_path = tmp_path_factory.mktemp(f"features-{engine}")
    server_url = request.getfixturevalue("postgres_server_url") if engine == "postgres" else None
    if engine == "duckdb":
        early = f"duckdb:///{tmp_path / 'early.duckdb'}"
    else:
        early = new_postgres_database(server_url, f"crmw_features_early_{os.getpid()}")
    for day in (FIRST_LOAD, CUT_OFF):
        load_raw(early, dbt_sources, day)
    late = _copy_warehouse(early, f"crmw_features_late_{os.getpid()}", tmp_path, server_url)
    load_raw(late, dbt_sources, DBT_LAST_DAY)
    _build_features(early, CUT_OFF, tmp_path / "early")
    _build_features(late, DBT_LAST_DAY, tmp_path / "late")
    return {"engine": engine, "early": early, "late": late}


def _rows(url: str, sql: str) -> list[dict]:
    with connect(url) as warehouse:
        frame = warehouse.fetch_df(sql)
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _comparable(value):
    """Engines and builds agree on values, not on Python types (Decimal, numpy, Timestamp)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, dt.datetime) or hasattr(value, "to_pydatetime"):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return round(float(value), 9)


def test_feature_tables_hold_the_as_of_date_the_snapshots_and_the_baskets(warehouses) -> None:
    late = warehouses["late"]
    [(as_of, customers, buyers)] = [tuple(row.values()) for row in _rows(
        late, "select cast(max(as_of_date) as varchar) as d, count(*) as n, sum(case when frequency > 0 then 1 else 0 end) as b"
        " from features.customer_features")]
    assert as_of == DBT_LAST_DAY.isoformat() and customers >= 500 and buyers > 100
    snapshots = [row["d"] for row in _rows(late, "select distinct cast(as_of_date as varchar) as d from features.training_set order by 1")]
    # Every Sunday with orders whose 14-day churn window is over: the history of the first load is
    # known from when it happened (orders_as_known), so snapshots start with the data, not the load.
    expected, day = [], DBT_START + dt.timedelta(days=(6 - DBT_START.weekday()) % 7)
    while day + dt.timedelta(days=14) <= DBT_LAST_DAY:
        expected.append(day.isoformat())
        day += dt.timedelta(days=7)
    assert snapshots == expected
    rfm = _rows(late, "select count(*) as n, sum(frequency) as f from features.customer_rfm")
    assert rfm[0]["n"] == buyers
    [baskets] = _rows(late, "select count(distinct basket_id) as baskets, count(distinct sku) as products,"
                            " count(distinct category) as categories from features.basket_items")
    # A basket per revenue order, but for the rare order whose every line is invalid.
    assert 0.99 * rfm[0]["f"] <= baskets["baskets"] <= rfm[0]["f"]
    assert 1 < baskets["categories"] < baskets["products"]


def test_features_of_a_date_do_not_change_when_later_deliveries_arrive(warehouses) -> None:
    early, late = warehouses["early"], warehouses["late"]
    as_known_then = {row["customer_id"]: row for row in _rows(early, "select * from features.customer_features")}
    seen_later = {row["customer_id"]: row for row in _rows(
        late, f"select * from features.customer_feature_snapshots where as_of_date = cast('{CUT_OFF}' as date)")}
    assert as_known_then and set(seen_later) == set(as_known_then)
    for customer, row in as_known_then.items():
        # The snapshot also carries when the incremental model last wrote it (_built_at).
        later = {k: _comparable(v) for k, v in seen_later[customer].items() if k != "_built_at"}
        assert later == {k: _comparable(v) for k, v in row.items()}, customer
    # The later deliveries did hold news about the date: orders placed by then that arrived
    # later, and tickets known then whose status changed later.
    late_news = _rows(late, f"""
        select
            (select count(*) from features.orders_as_known as now_
             where now_.known_until is null
                and now_.order_date <= cast('{CUT_OFF}' as date)
                and now_.order_id not in (
                    select order_id from features.orders_as_known
                    where known_from <= cast('{CUT_OFF}' as date)
                        and (known_until is null or known_until > cast('{CUT_OFF}' as date))
                )) as orders_delivered_later,
            (select count(*) from features.tickets_as_known as then_
             inner join features.tickets_as_known as now_
                on then_.ticket_id = now_.ticket_id
             where then_.known_from <= cast('{CUT_OFF}' as date)
                and (then_.known_until is null or then_.known_until > cast('{CUT_OFF}' as date))
                and now_.known_until is null
                and then_.ticket_status <> now_.ticket_status) as tickets_changed_later""")
    assert late_news[0]["orders_delivered_later"] > 0 and late_news[0]["tickets_changed_later"] > 0


def test_training_labels_agree_with_the_churn_the_simulator_planted(warehouses, dbt_sources: Path) -> None:
    late = warehouses["late"]
    with (dbt_sources / "truth" / "identities.csv").open(newline="") as handle:
        person_of = {(row["system"], row["entity"], row["record_key"]): row["person_id"] for row in csv.DictReader(handle)}
    with (dbt_sources / "truth" / "churn_events.csv").open(newline="") as handle:
        churned_on = {row["person_id"]: dt.date.fromisoformat(row["churn_date"]) for row in csv.DictReader(handle)}
    persons: dict[str, set[str]] = {}
    for row in _rows(late, "select source_system, source_table, source_key, customer_id from intermediate.int_customer_identity"):
        person = person_of.get((row["source_system"], row["source_table"], row["source_key"]))
        if person:
            persons.setdefault(row["customer_id"], set()).add(person)
    rows = _rows(late, "select customer_id, as_of_date, is_churned, spend_next_90_days, spend_next_90_days_is_complete,"
                       " spend_next_365_days_is_complete from features.training_set")
    gone_before = 0
    for row in rows:
        snapshot = _comparable(row["as_of_date"])
        people = persons.get(row["customer_id"], set())
        # Churned people never buy again: a customer whose people had all churned by the snapshot
        # placed no order after it; one who did buy had someone still alive.
        if people and all(churned_on.get(person, dt.date.max) <= snapshot for person in people):
            gone_before += 1
            assert row["is_churned"], row
        # Windows of 90 and 365 days after a snapshot of these 60 days end after the last day.
        assert row["spend_next_90_days"] is None and not row["spend_next_90_days_is_complete"]
        assert not row["spend_next_365_days_is_complete"]
    assert gone_before > 0
    churn_rate = sum(row["is_churned"] for row in rows) / len(rows)
    assert 0 < churn_rate < 1


def _by_customer(url: str, sql: str) -> dict[str, dict]:
    return {row["customer_id"]: row for row in _rows(url, sql)}


def _close(left, right) -> bool:
    if left is None or right is None:
        return left is None and right is None
    return abs(float(left) - float(right)) <= 1e-9


def test_order_mix_features_agree_with_the_order_marts(warehouses) -> None:
    """On the last day everything delivered is known, so the marts give the same revenue orders:
    discount share, units per order and channel shares recomputed from them, customer by customer."""
    late = warehouses["late"]
    features = _by_customer(late, "select customer_id, frequency, discount_share, items_per_order, web_share,"
                                  " store_share, phone_share from features.customer_features")
    lines = _by_customer(late, """
        select
            orders.customer_id,
            sum(lines.gross_amount) as gross,
            sum(lines.discount_amount) as discount,
            sum(lines.quantity) as units
        from marts.fct_orders as orders
        inner join marts.fct_order_lines as lines
            on orders.order_id = lines.order_id
        where orders.is_revenue and lines.is_valid
        group by orders.customer_id""")
    channels = _by_customer(late, """
        select
            customer_id,
            count(*) as orders,
            sum(case when channel = 'web' then 1 else 0 end) as web,
            sum(case when channel = 'store' then 1 else 0 end) as store,
            sum(case when channel = 'phone' then 1 else 0 end) as phone
        from marts.fct_orders
        where is_revenue
        group by customer_id""")
    assert set(channels) <= set(features) and set(lines) <= set(channels)
    discounted = 0
    for customer, row in features.items():
        bought, spent = channels.get(customer), lines.get(customer)
        assert (row["frequency"] or 0) == (bought["orders"] if bought else 0), customer
        if not bought:
            assert [row[k] for k in ("items_per_order", "web_share", "store_share", "phone_share", "discount_share")] == [None] * 5
            continue
        for channel in ("web", "store", "phone"):
            assert _close(row[f"{channel}_share"], bought[channel] / bought["orders"]), (customer, channel)
        assert _close(row["web_share"] + row["store_share"] + row["phone_share"], 1.0), customer
        assert _close(row["items_per_order"], (spent["units"] if spent else 0) / bought["orders"]), customer
        expected_share = float(spent["discount"]) / float(spent["gross"]) if spent else None
        assert _close(row["discount_share"], expected_share), customer
        discounted += bool(expected_share)
    assert discounted > 10


def test_marketing_opt_in_is_that_of_each_customers_latest_crm_contact_versions(warehouses) -> None:
    """On the last day every version is known: the opt-in of each CRM contact's latest version (by
    modification time), true when any contact of the customer is; null without a CRM contact."""
    late = warehouses["late"]
    features = _by_customer(late, "select customer_id, is_crm_contact, marketing_opt_in from features.customer_features")
    latest: dict[str, dict] = {}
    for row in _rows(late, """
        select identity.customer_id, versions.crm_id, versions.modified_at, versions._delivery_date as delivered,
            versions._version_hash as version_hash, versions.is_marketing_opt_in as opted_in
        from staging.stg_crm__customer_versions as versions
        inner join intermediate.int_customer_identity as identity
            on identity.source_table = 'customers' and identity.source_key = versions.crm_id
        where not versions._is_deleted"""):
        order = (row["modified_at"], row["delivered"], row["version_hash"])
        if row["crm_id"] not in latest or order > latest[row["crm_id"]]["order"]:
            latest[row["crm_id"]] = {**row, "order": order}
    consent: dict[str, list] = {}
    for row in latest.values():
        consent.setdefault(row["customer_id"], []).append(row["opted_in"])
    values = {True: 0, False: 0, None: 0}
    for customer, row in features.items():
        if not row["is_crm_contact"]:
            assert row["marketing_opt_in"] is None, customer
            continue
        known = [value for value in consent[customer] if value is not None]
        assert row["marketing_opt_in"] == (any(known) if known else None), customer
        values[row["marketing_opt_in"]] += 1
    assert values[True] and values[False]


def test_category_mix_shares_sum_to_one_and_agree_with_the_line_marts(warehouses) -> None:
    late = warehouses["late"]
    mix = _rows(late, "select customer_id, cast(as_of_date as varchar) as d, category, net_amount, spend_share"
                      " from features.customer_category_mix")
    assert {row["d"] for row in mix} == {DBT_LAST_DAY.isoformat()}
    expected = {(row["customer_id"], row["category"]): row["net_amount"] for row in _rows(late, """
        select orders.customer_id, products.category, sum(lines.net_amount) as net_amount
        from marts.fct_orders as orders
        inner join marts.fct_order_lines as lines
            on orders.order_id = lines.order_id
        inner join marts.dim_products as products
            on lines.sku = products.sku
        where orders.is_revenue and lines.is_valid
        group by orders.customer_id, products.category""")}
    assert {(row["customer_id"], row["category"]): row["net_amount"] for row in mix} == expected
    shares: dict[str, list[float]] = {}
    for row in mix:
        shares.setdefault(row["customer_id"], []).append(row["spend_share"])
    assert all(_close(sum(values), 1.0) for values in shares.values())
    # The same spend the customer features rank categories by: as many categories, the largest
    # share the favourite's.
    features = _by_customer(late, "select customer_id, distinct_categories, favourite_category_share"
                                  " from features.customer_features where distinct_categories > 0")
    assert set(features) == set(shares)
    for customer, row in features.items():
        assert len(shares[customer]) == row["distinct_categories"], customer
        assert _close(max(shares[customer]), row["favourite_category_share"]), customer


def test_basket_items_carry_the_category_of_their_product(warehouses) -> None:
    late = warehouses["late"]
    [counts] = _rows(late, """
        select
            count(*) as product_rows,
            sum(case when items.category = products.category then 1 else 0 end) as product_rows_matching
        from features.basket_items as items
        left join marts.dim_products as products
            on items.sku = products.sku""")
    assert counts["product_rows"] > 0 and counts["product_rows_matching"] == counts["product_rows"]


def _frame(url: str, sql: str):
    with connect(url) as warehouse:
        return warehouse.fetch_df(sql)


def _cents(amounts):
    """Money fetched as float64 (2-decimal numerics) as exact integer cents (null stays null)."""
    return (amounts * 100).round().astype("Int64")


def _orders_known_on(spans, dates):
    """The spans of features.orders_as_known that hold each of `dates`, each with that as_of_date."""
    import pandas as pd

    return pd.concat([
        spans[(spans["known_from"] <= day) & (spans["known_until"].isna() | (spans["known_until"] > day))].assign(as_of_date=day)
        for day in dates
    ], ignore_index=True)


def _purchase_summaries_from_orders(orders):
    """The purchase summary recomputed in pandas from features.orders_as_known: a purchase is a
    day with a revenue order; money in cents so sums are exact."""
    import pandas as pd

    revenue = orders[orders["is_revenue"]].assign(cents=lambda frame: _cents(frame["net_amount"]))
    days = revenue.groupby(["as_of_date", "customer_id", "order_date"], as_index=False)["cents"].sum()
    days["first_purchase_date"] = days.groupby(["as_of_date", "customer_id"])["order_date"].transform("min")
    days["repeat_cents"] = days["cents"].where(days["order_date"] > days["first_purchase_date"], 0)
    days["recent_cents"] = days["cents"].where(days["order_date"] > days["as_of_date"] - pd.Timedelta(days=365), 0)
    summary = days.groupby(["as_of_date", "customer_id"]).agg(
        purchase_days=("order_date", "size"),
        first_purchase_date=("order_date", "min"),
        last_purchase_date=("order_date", "max"),
        repeat_cents=("repeat_cents", "sum"),
        monetary_cents=("recent_cents", "sum"),
    ).reset_index()
    repeats = summary["purchase_days"] - 1
    summary["repeat_purchases"] = repeats
    summary["purchase_span_days"] = (summary["last_purchase_date"] - summary["first_purchase_date"]).dt.days
    summary["purchase_age_days"] = (summary["as_of_date"] - summary["first_purchase_date"]).dt.days
    # As the model divides: the exact amount as a double, by the count.
    summary["mean_repeat_value"] = (summary["repeat_cents"] / 100 / repeats).where(repeats > 0)
    return summary


SUMMARY_KEY = ["as_of_date", "customer_id"]
SUMMARY_COLUMNS = ["purchase_days", "repeat_purchases", "first_purchase_date", "last_purchase_date",
                   "purchase_span_days", "purchase_age_days", "mean_repeat_value", "monetary_cents"]


def _purchase_summaries(url: str, where: str = "true"):
    summary = _frame(url, f"select * from features.customer_purchase_summary where {where}")
    return summary.assign(monetary_cents=_cents(summary["monetary_last_365_days"]))


def _records(frame, columns) -> dict:
    """Rows by (as_of_date, customer_id), nulls as None so they compare equal."""
    rows = frame.set_index(SUMMARY_KEY)[columns].astype(object)
    return rows.where(rows.notna(), None).to_dict("index")


def test_purchase_summary_agrees_with_the_orders_as_known_on_every_feature_date(warehouses) -> None:
    late = warehouses["late"]
    summary = _purchase_summaries(late)
    # The as-of date and every training snapshot, with customers who bought more than once.
    snapshots = _frame(late, "select as_of_date from features.feature_dates")["as_of_date"]
    expected = _purchase_summaries_from_orders(_orders_known_on(_frame(late, "select * from features.orders_as_known"), snapshots))
    assert set(summary["as_of_date"]) == set(snapshots) and len(snapshots) > 2
    assert (summary["repeat_purchases"] > 0).sum() > 50
    assert _records(summary, SUMMARY_COLUMNS) == _records(expected, SUMMARY_COLUMNS)


def test_purchase_summary_holds_the_bg_nbd_invariants_and_agrees_with_the_features(warehouses) -> None:
    late = warehouses["late"]
    summary = _purchase_summaries(late)
    assert (summary["repeat_purchases"] == summary["purchase_days"] - 1).all()
    assert (summary["repeat_purchases"] >= 0).all()
    assert (summary["purchase_span_days"] <= summary["purchase_age_days"]).all()
    assert (summary["mean_repeat_value"].isna() == (summary["repeat_purchases"] == 0)).all()
    # The same revenue orders as the features: a row for each buyer, the same first and last
    # order day, never more purchase days than orders.
    features = _frame(late, "select as_of_date, customer_id, frequency, first_order_date, last_order_date"
                            " from features.customer_feature_snapshots where frequency > 0")
    both = features.merge(summary, on=SUMMARY_KEY, how="outer", indicator=True)
    assert (both["_merge"] == "both").all()
    assert (both["first_purchase_date"] == both["first_order_date"]).all()
    assert (both["last_purchase_date"] == both["last_order_date"]).all()
    assert (both["purchase_days"] <= both["frequency"]).all()
    # The training set carries each snapshot's summary.
    training = _frame(late, "select * from features.training_set")
    training = training.assign(monetary_cents=_cents(training["monetary_last_365_days"]))
    at_snapshots = summary[summary["as_of_date"].isin(set(training["as_of_date"]))]
    assert _records(training.dropna(subset=["purchase_days"]), SUMMARY_COLUMNS) == _records(at_snapshots, SUMMARY_COLUMNS)
    assert (training["purchase_days"].isna() == (training["frequency"] == 0)).all()


def test_purchase_summary_of_a_date_does_not_change_when_later_deliveries_arrive(warehouses) -> None:
    on_cut_off = f"as_of_date = cast('{CUT_OFF}' as date)"
    as_known_then = _purchase_summaries(warehouses["early"], on_cut_off)
    seen_later = _purchase_summaries(warehouses["late"], on_cut_off)
    assert len(as_known_then) > 100
    assert _records(seen_later, SUMMARY_COLUMNS) == _records(as_known_then, SUMMARY_COLUMNS)


def test_spend_labels_follow_the_spend_window_vars(warehouses, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Windows of 7 and 21 days: the training set's spend labels (named for 90 and 365 days) sum
    the revenue orders known on the run's date in those days after each snapshot, and the long
    one is complete only for snapshots at least 21 days before it."""
    import pandas as pd

    engine = warehouses["engine"]
    server_url = request.getfixturevalue("postgres_server_url") if engine == "postgres" else None
    url = _copy_warehouse(warehouses["late"], f"crmw_features_windows_{os.getpid()}", tmp_path, server_url)
    windows = {"spend_window_short_days": 7, "spend_window_long_days": 21}
    variables = json.dumps({"as_of_date": DBT_LAST_DAY.isoformat(), **FEATURE_VARS, **windows})
    dbt_in_process(url, "run", "--select", "training_labels", "--vars", variables, tmp_path=tmp_path)
    training = _frame(url, "select customer_id, as_of_date, spend_next_90_days, spend_next_90_days_is_complete,"
                           " spend_next_365_days, spend_next_365_days_is_complete from features.training_set")
    orders = _frame(url, "select customer_id, order_date, net_amount from features.orders_as_known"
                         " where is_revenue and known_until is null")
    after = training[SUMMARY_KEY].merge(orders, on="customer_id")
    days_after = (after["order_date"] - after["as_of_date"]).dt.days
    after = after.assign(cents=_cents(after["net_amount"]))
    last_day = pd.Timestamp(DBT_LAST_DAY)
    for label, days in (("spend_next_90_days", 7), ("spend_next_365_days", 21)):
        in_window = after[(days_after > 0) & (days_after <= days)].groupby(SUMMARY_KEY)["cents"].sum()
        complete = training["as_of_date"] + pd.Timedelta(days=days) <= last_day
        assert (training[f"{label}_is_complete"] == complete).all(), label
        known = training[complete].set_index(SUMMARY_KEY)
        assert len(known) > 100 and (known[label] > 0).sum() > 10, label
        expected = in_window.reindex(known.index, fill_value=0)
        assert (_cents(known[label]) == expected).all(), label
        assert training.loc[~complete, label].isna().all(), label
    assert not training["spend_next_365_days_is_complete"].all()


def test_referral_edges_are_those_of_the_customer_dimension(warehouses) -> None:
    """Raw holds nothing after the as-of date in either warehouse, so each contact's current
    version is its latest, which dim_customers reads: the same edges, bar self-referrals, and the
    referred contact's signup as the referral date (customers with one contact: dim_customers
    keeps one contact's referrer)."""
    for url, as_of in ((warehouses["early"], CUT_OFF), (warehouses["late"], DBT_LAST_DAY)):
        referrals = _rows(url, "select customer_id, referred_by_customer_id, as_of_date, referral_date"
                               " from features.customer_referrals")
        customers = _by_customer(url, "select customer_id, crm_contact_count, referred_by_customer_id, signup_date"
                                      " from marts.dim_customers")
        assert referrals and {_comparable(row["as_of_date"]) for row in referrals} == {as_of}
        edges = {(row["customer_id"], row["referred_by_customer_id"]): row for row in referrals}
        expected = {(customer, row["referred_by_customer_id"]) for customer, row in customers.items()
                    if row["referred_by_customer_id"] not in (None, customer)}
        assert expected <= set(edges)
        single = {edge for edge in edges if customers[edge[0]]["crm_contact_count"] == 1}
        assert single == {edge for edge in expected if customers[edge[0]]["crm_contact_count"] == 1}
        for edge in single:
            assert _comparable(edges[edge]["referral_date"]) == _comparable(customers[edge[0]]["signup_date"]), edge


def test_feature_dates_hold_every_period_end_with_one_as_of_row(warehouses) -> None:
    """Every weekly period end with orders up to the as-of date, the as-of date once; the training
    snapshots are the ones whose churn window is over, and the feature tables read them as before."""
    for url, as_of in ((warehouses["early"], CUT_OFF), (warehouses["late"], DBT_LAST_DAY)):
        dates = _frame(url, "select * from features.feature_dates order by as_of_date")
        days = [value.date() for value in dates["as_of_date"]]
        assert len(set(days)) == len(days) and days[-1] == as_of and dates["is_as_of_date"].sum() == 1
        assert bool(dates["is_as_of_date"].iloc[-1]) and not dates["is_training_snapshot"].iloc[-1]
        assert all(day.weekday() == 6 for day in days[:-1])  # period ends: Sundays (CUT_OFF is one too)
        window_over = [day + dt.timedelta(days=14) <= as_of for day in days]
        assert dates["is_training_snapshot"].tolist() == [over and day < as_of for day, over in zip(days, window_over)]
        assert not all(window_over[:-1])  # some period ends serve campaigns only
        training = {value.date() for value in _frame(url, "select distinct as_of_date from features.training_set")["as_of_date"]}
        assert training == {day for day, flag in zip(days, dates["is_training_snapshot"]) if flag}
        current = _frame(url, "select distinct as_of_date from features.customer_features")["as_of_date"]
        assert [value.date() for value in current] == [as_of]


def test_campaign_members_carry_the_features_of_the_last_feature_date_before_their_campaign(warehouses) -> None:
    late = warehouses["late"]
    rows = _frame(late, "select * from features.campaign_training_set")
    members = _frame(late, f"""
        select campaign_id, customer_id, campaign_start_date, is_treatment, has_converted
        from marts.fct_campaign_responses
        where is_valid and customer_id is not null and campaign_end_date <= cast('{DBT_LAST_DAY}' as date)""")
    dates = sorted(_frame(late, "select as_of_date from features.feature_dates")["as_of_date"])
    assert rows["campaign_id"].nunique() >= 2 and len(rows) > 100
    assert set(zip(rows["campaign_id"], rows["customer_id"])) <= set(zip(members["campaign_id"], members["customer_id"]))
    for start, campaign in rows.groupby("campaign_start_date"):
        assert set(campaign["as_of_date"]) == {max(day for day in dates if day < start)}
    # Dropped only when the customer had no features then (unknown yet): a few per cent at most.
    assert len(rows) >= 0.9 * len(members[members["campaign_start_date"] > dates[0]])
    snapshots = _frame(late, "select * from features.customer_feature_snapshots")
    joined = rows.merge(snapshots, on=["customer_id", "as_of_date"], suffixes=("", "_snapshot"))
    assert len(joined) == len(rows)
    for column in ("monetary", "recency_days", "marketing_opt_in", "campaigns_received"):
        same = (joined[column] == joined[f"{column}_snapshot"]) | (joined[column].isna() & joined[f"{column}_snapshot"].isna())
        assert same.all(), column
    # Campaigns go to opted-in contacts, with a fifth held out as control.
    assert 0.7 < rows["is_treatment"].mean() < 0.9


def test_a_days_key_test_of_the_feature_snapshots_reads_the_rows_it_wrote_and_the_whole_table_pass_every_row(
        warehouses, tmp_path, request) -> None:
    # A duplicate of a snapshot row left by an earlier run (an older _built_at): the day's key test
    # reads what the latest run wrote (delete+insert on that key replaced the rest); the weekly
    # whole-table pass finds it.
    server_url = request.getfixturevalue("postgres_server_url") if warehouses["engine"] == "postgres" else None
    url = _copy_warehouse(warehouses["late"], f"crmw_features_key_{os.getpid()}", tmp_path, server_url)
    with connect(url) as warehouse, warehouse.transaction():
        warehouse.execute("create table features.earlier_copy as select * from features.customer_feature_snapshots"
                          " where customer_id = (select min(customer_id) from features.customer_feature_snapshots)")
        warehouse.execute("update features.earlier_copy set _built_at = _built_at - interval '1 day'")
        warehouse.execute("insert into features.customer_feature_snapshots select * from features.earlier_copy")
        warehouse.execute("drop table features.earlier_copy")
    key_test = ["test", "--select", "customer_feature_snapshots,test_name:unique_key"]
    variables = {"as_of_date": DBT_LAST_DAY.isoformat(), **FEATURE_VARS}
    dbt_in_process(url, *key_test, "--vars", json.dumps(variables), tmp_path=tmp_path)
    whole_table = dbt_in_process(url, *key_test, "--vars", json.dumps({**variables, "test_scope": "all"}), tmp_path=tmp_path, check=False)
    assert not whole_table.success and "FAIL 9 unique_key_customer_feature_snapshots" in whole_table.report, whole_table.report


@pytest.mark.parametrize("summary_behind", [False, True], ids=["summary-up-to-date", "summary-left-behind"])
def test_changed_customers_reads_a_model_left_behind_whole_and_an_up_to_date_one_on_its_latest_date(
        warehouses, tmp_path, request, summary_behind) -> None:
    # A customer identity no longer knows, left in the purchase summary on an earlier date only: what
    # a run that removed it from the other models, but failed in this one, would leave.
    server_url = request.getfixturevalue("postgres_server_url") if warehouses["engine"] == "postgres" else None
    url = _copy_warehouse(warehouses["late"], f"crmw_features_behind_{os.getpid()}", tmp_path, server_url)
    variables = {"as_of_date": DBT_LAST_DAY.isoformat(), **FEATURE_VARS}
    # customer_360, which the feature build leaves out, written as if by the same run as the features.
    dbt_in_process(url, "run", "--select", "fct_interactions", "fct_campaign_responses", "customer_360", "--vars", json.dumps(variables),
                   tmp_path=tmp_path)
    with connect(url) as warehouse, warehouse.transaction():
        warehouse.execute("update marts.customer_360 set _built_at = (select max(_built_at) from features.customer_feature_snapshots)")
        warehouse.execute("create table features.left_over as select * from features.customer_purchase_summary"
                          " where as_of_date = (select min(as_of_date) from features.customer_purchase_summary) limit 1")
        warehouse.execute("update features.left_over set customer_id = 'left-over', _built_at = _built_at - interval '2 days'")
        warehouse.execute("insert into features.customer_purchase_summary select * from features.left_over")
        warehouse.execute("drop table features.left_over")
        if summary_behind:  # its newest write older than the other models'
            warehouse.execute("update features.customer_purchase_summary set _built_at = _built_at - interval '1 day'")
    dbt_in_process(url, "run", "--select", "changed_customers", "--vars", json.dumps(variables), tmp_path=tmp_path)
    with connect(url) as warehouse:
        named = warehouse.fetchall("select reason, features_changed from features.changed_customers where customer_id = 'left-over'")
    # An up-to-date model names every customer it holds on its latest date (each earlier date's are
    # there too, unless identity dropped them, and then they were removed from every date).
    assert named == ([("no longer a customer", True)] if summary_behind else [])
