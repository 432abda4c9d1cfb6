"""The warehouse adapter behaves the same on DuckDB, PostgreSQL and a local Spark session: bulk
loads, frames, replace-by-match, deleting rows, schema evolution, URL checking, row counts and
storage; transactions on the two engines that have them.

The Spark cases share one session for the module (its JVM starts once, tens of seconds), each test
on an emptied warehouse; they need pyspark and a Java runtime and are skipped, saying which is
missing, without them."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import socket
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from tests.conftest import ENGINES, PROJECT_ROOT
from tests.spark_support import module_spark_session
from warehouse import WarehouseSettingsError, WarehouseUrlError, adapter, connect, parse_warehouse_url
from warehouse.adapter import DEFAULT_DUCKDB_MEMORY_LIMIT, duckdb_connection

pytestmark = [
    # pyspark 4.3 warns at its first pandas check that it does not fully support pandas 3: the
    # adapter's frames come from Arrow tables, not from pyspark's pandas conversion.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


@pytest.fixture(scope="module")
def spark_warehouse(tmp_path_factory):
    """(folder, session): the module's local Spark session, its warehouse in `folder`."""
    folder = tmp_path_factory.mktemp("spark")
    with module_spark_session(folder, "test-warehouse-adapter", "the warehouse adapter on Spark") as session:
        yield folder, session


@pytest.fixture
def spark_url(spark_warehouse) -> str:
    """The module's Spark warehouse, emptied: every schema but Spark's `default` dropped."""
    folder, session = spark_warehouse
    for database in session.catalog.listDatabases():
        if database.name != "default":
            session.sql(f"drop database {database.name} cascade")
    return f"spark://{folder}"


# Overrides conftest's fixture of the same name in this file: each test on every engine, Spark too.
@pytest.fixture(params=[*ENGINES, pytest.param("spark", marks=pytest.mark.spark)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty warehouse on each engine: a DuckDB file, a fresh PostgreSQL database, or the
    module's Spark warehouse emptied."""
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    if request.param == "spark":
        return request.getfixturevalue("spark_url")
    return request.getfixturevalue("postgres_url")


# For the behaviours of transactions, which Spark's parquet tables do not have, and of the other
# engines' ways of streaming a result.
on_duckdb_and_postgres = pytest.mark.parametrize("warehouse_url", ENGINES, indirect=True)

CONTRACT_COLUMNS = {
    "id": "integer",
    "s": "string",
    "i": "integer",
    "d": "decimal",
    "f": "double",
    "b": "boolean",
    "day": "date",
    "ts": "timestamp",
}

# Edge values of every contract type, with a NULL in every column. Strings cover the empty string
# (which must stay distinct from NULL), the CSV-special characters COPY sees, and non-ASCII text.
ROWS = [
    (1, "plain", 0, Decimal("0.0000"), 0.0, False, dt.date(2025, 1, 31), dt.datetime(2025, 1, 31, 12, 34, 56, 123456)),
    (2, "", -1, Decimal("-0.0001"), -0.1, True, dt.date(1900, 1, 1), dt.datetime(1999, 12, 31, 23, 59, 59, 999999)),
    (3, None, None, None, None, None, None, None),
    (4, 'comma, "quote"\nnewline\\back', 2**62, Decimal("12345678901234.5678"), 1e-300, True, dt.date(2000, 2, 29), dt.datetime(2025, 1, 1, 0, 0, 0, 1)),
    (5, "Zoë 東京 NULL \\N \\.", 2**53 + 1, Decimal("99999999999999.9999"), 123456789.125, False, dt.date(9999, 12, 31), dt.datetime(1970, 1, 1)),
]
ARROW_TYPES = {
    "id": pa.int64(),
    "s": pa.string(),
    "i": pa.int64(),
    "d": pa.decimal128(18, 4),
    "f": pa.float64(),
    "b": pa.bool_(),
    "day": pa.date32(),
    "ts": pa.timestamp("us"),
}


def _arrow(rows: list[tuple]) -> pa.Table:
    names = list(ARROW_TYPES)
    return pa.table({name: pa.array([row[i] for row in rows], ARROW_TYPES[name]) for i, name in enumerate(names)})


def _load_all_types(warehouse_url: str, rows: list[tuple] = ROWS) -> None:
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("t.all_types", CONTRACT_COLUMNS)
        assert warehouse.append_arrow("t.all_types", _arrow(rows)) == len(rows)


def _other_duckdb_url(tmp_path: Path) -> str:
    return f"duckdb:///{tmp_path / 'other.duckdb'}"


def test_append_arrow_round_trips_every_contract_type_exactly(warehouse_url):
    _load_all_types(warehouse_url)
    with connect(warehouse_url) as warehouse:
        back = warehouse.fetchall("select id, s, i, d, f, b, day, ts from t.all_types order by id")
    assert back == ROWS
    # Same Python types on both engines, not just equal values (Decimal('1') == 1.0 would hide it).
    assert [type(value) for value in back[3]] == [int, str, int, Decimal, float, bool, dt.date, dt.datetime]


def test_append_arrow_keeps_empty_string_distinct_from_null(warehouse_url):
    _load_all_types(warehouse_url)
    with connect(warehouse_url) as warehouse:
        empty = warehouse.fetchall("select id from t.all_types where s = ''")
        null = warehouse.fetchall("select id from t.all_types where s is null")
    assert empty == [(2,)]
    assert null == [(3,)]


def test_append_arrow_round_trips_a_digest_given_as_uuid_text(warehouse_url):
    digest = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("t.hashes", {"id": "integer", "h": "digest"})
        warehouse.append_arrow("t.hashes", pa.table({"id": [1, 2], "h": [digest, None]}))
        back = warehouse.fetchall("select id, h from t.hashes order by id")
        found = warehouse.fetchall("select id from t.hashes where h = ?", (uuid.UUID(digest),))
    # A uuid on DuckDB and PostgreSQL, its text on Spark, which has no uuid type.
    assert [(number, None if value is None else str(value)) for number, value in back] == [(1, digest), (2, None)]
    assert found == [(1,)]


def test_append_arrow_of_no_rows_adds_nothing(warehouse_url):
    _load_all_types(warehouse_url, [])
    with connect(warehouse_url) as warehouse:
        assert warehouse.fetchall("select count(*) from t.all_types") == [(0,)]


FRAME_QUERIES = {
    "no nulls": "select * from t.all_types where id in (1, 2, 4) order by id",
    "with nulls": "select * from t.all_types order by id",
    "only nulls": "select * from t.all_types where id = 3",
    "no rows": "select * from t.all_types where id < 0",
    "aggregates": "select count(*) as n, sum(i) as total, sum(d) as money, max(ts) as latest, min(day) as first_day from t.all_types",
}


def _frames_of_every_type(url: str) -> dict[str, pd.DataFrame]:
    _load_all_types(url)
    with connect(url) as warehouse:
        return {name: warehouse.fetch_df(sql) for name, sql in FRAME_QUERIES.items()}


def test_fetch_df_gives_the_same_dtypes_and_values_on_both_engines(tmp_path, postgres_url):
    queries = FRAME_QUERIES
    frames = {engine: _frames_of_every_type(url) for engine, url in (("duckdb", _other_duckdb_url(tmp_path)), ("postgres", postgres_url))}
    for name in queries:
        duck, pg = frames["duckdb"][name], frames["postgres"][name]
        assert {c: str(t) for c, t in pg.dtypes.items()} == {c: str(t) for c, t in duck.dtypes.items()}, name
        # DuckDB's own decimal-to-double conversion of a large sum can be one ulp off PostgreSQL's.
        pd.testing.assert_frame_equal(pg, duck, check_exact=name != "aggregates", rtol=1e-15, obj=name)
    with_nulls = frames["postgres"]["with nulls"]
    # The documented promises: decimals as float64, dates and timestamps as datetime64.
    assert str(with_nulls["d"].dtype) == "float64"
    assert str(with_nulls["day"].dtype) == "datetime64[us]"
    assert str(with_nulls["ts"].dtype) == "datetime64[us]"
    assert pd.api.types.is_integer_dtype(with_nulls["i"].dtype)
    # Integers beyond float precision survive a NULL in the same column.
    assert list(with_nulls["i"].dropna()) == [0, -1, 2**62, 2**53 + 1]
    assert with_nulls.loc[0, "ts"] == pd.Timestamp("2025-01-31 12:34:56.123456")


@pytest.mark.spark
def test_fetch_df_on_spark_gives_the_dtypes_and_values_duckdb_gives(tmp_path, spark_url, monkeypatch):
    duck, spark = _frames_of_every_type(_other_duckdb_url(tmp_path)), _frames_of_every_type(spark_url)
    for name in FRAME_QUERIES:
        # Spark's sum of bigints is a bigint (int64); DuckDB's is a 128-bit integer, a float64 in a frame.
        pd.testing.assert_frame_equal(spark[name], duck[name], check_exact=name != "aggregates", rtol=1e-15,
                                      check_dtype=name != "aggregates", obj=name)
    assert {column: str(kind) for column, kind in spark["aggregates"].dtypes.items()} == {
        "n": "int64", "total": "int64", "money": "float64", "latest": "datetime64[us]", "first_day": "datetime64[us]"}
    # Batches of two rows, so their dictionaries differ from the whole column's sorted one.
    monkeypatch.setattr(adapter, "ARROW_BATCH_ROWS", 2)
    with connect(spark_url) as warehouse:
        encoded = warehouse.fetch_df("select id, s from t.all_types order by id desc", categorical=("s",))
        with pytest.raises(ValueError, match="categorical column 'id': not a text column of the query"):
            warehouse.fetch_df("select id, s from t.all_types", categorical=("id",))
    pd.testing.assert_frame_equal(encoded, spark["with nulls"][["id", "s"]][::-1].reset_index(drop=True).astype({"s": "category"}))


def test_fetch_df_on_duckdb_gives_duckdbs_own_frames_through_arrow(tmp_path):
    url = _other_duckdb_url(tmp_path)
    _load_all_types(url)
    queries = [
        "select * from t.all_types order by id",
        "select * from t.all_types where id < 0",
        "select count(*) as n, sum(i) as total, sum(d) as money, cast(null as varchar) as nothing from t.all_types",
        # Types Arrow hands over otherwise: DuckDB's own frame.
        "select interval 1 day as gap, null as untyped, timestamptz '2025-01-01 00:00:00+00' as at",
    ]
    with connect(url) as warehouse:
        for sql in queries:
            # A decimal sum as a double: Arrow rounds it correctly, DuckDB can be one ulp off.
            pd.testing.assert_frame_equal(warehouse.fetch_df(sql), warehouse._own_frame(sql), check_exact=False, rtol=1e-15, obj=sql)


def test_fetch_df_on_postgresql_reads_a_type_arrow_cannot_parse_row_by_row(postgres_url):
    with connect(postgres_url) as warehouse:
        frame = warehouse.fetch_df("select ? as n, cast(? as uuid) as id, 'it''s' as s", (7, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))
    assert frame.to_dict("records") == [{"n": 7, "id": uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "s": "it's"}]


# PostgreSQL's CSV text and DuckDB's batches; Spark hands its result over as one Arrow table (its
# categorical columns: test_fetch_df_on_spark_gives_the_dtypes_and_values_duckdb_gives).
@on_duckdb_and_postgres
def test_fetch_df_keeps_line_breaks_inside_text_across_a_large_result(warehouse_url):
    # Several megabytes: PostgreSQL's COPY text reaches Arrow's parallel CSV reader in many blocks.
    rows = 60_000
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("t.comments", {"id": "integer", "body": "string"})
        warehouse.append_arrow("t.comments", pa.table({
            "id": range(rows), "body": [f"line one of {n}\nline two, \"quoted\"\n\nlast" for n in range(rows)]}))
        frame = warehouse.fetch_df("select id, body from t.comments order by id")
    assert len(frame) == rows and list(frame["id"][:2]) == [0, 1]
    assert (frame["body"] == [f"line one of {n}\nline two, \"quoted\"\n\nlast" for n in range(rows)]).all()


@on_duckdb_and_postgres
def test_fetch_df_reads_categorical_columns_as_a_whole_read_turned_categorical(warehouse_url, monkeypatch):
    # Small batches and spool size, so the rows arrive in many Arrow batches from DuckDB and in many
    # CSV blocks, through a temporary file, from PostgreSQL.
    monkeypatch.setattr(adapter, "ARROW_BATCH_ROWS", 10_000)
    monkeypatch.setattr(adapter, "CSV_IN_MEMORY_BYTES", 2**16)
    rows = 200_000
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("t.basket_items", {"id": "integer", "sku": "string", "note": "string"})
        warehouse.append_arrow("t.basket_items", pa.table({
            "id": range(rows),
            # Values first met out of order, so the batches' dictionaries differ from the sorted one.
            "sku": [f"sku-{(n * 7919) % 37:02d}" for n in range(rows)],
            "note": [None if n % 5 == 0 else "" if n % 5 == 1 else f"note {n % 3}" for n in range(rows)],
        }))
        sql = "select id, sku, note from t.basket_items order by id"
        encoded = warehouse.fetch_df(sql, categorical=("sku", "note"))
        whole = warehouse.fetch_df(sql)
        empty = warehouse.fetch_df("select id, sku from t.basket_items where id < 0", categorical=("sku",))
        with pytest.raises(ValueError, match="categorical column 'id': not a text column of the query"):
            warehouse.fetch_df(sql, categorical=("id",))
    pd.testing.assert_frame_equal(encoded, whole.astype({"sku": "category", "note": "category"}))
    assert list(encoded["sku"].cat.categories) == [f"sku-{n:02d}" for n in range(37)]
    assert empty.empty and empty["sku"].dtype == "category"


def test_fetch_df_binds_question_mark_parameters(warehouse_url):
    _load_all_types(warehouse_url)
    with connect(warehouse_url) as warehouse:
        frame = warehouse.fetch_df("select id, s from t.all_types where day >= ? and s like ? order by id", (dt.date(2000, 1, 1), "%a%"))
    assert frame.to_dict("records") == [{"id": 1, "s": "plain"}, {"id": 4, "s": 'comma, "quote"\nnewline\\back'}]


def _events(rows: list[tuple[str, dt.date, int]]) -> pa.Table:
    return pa.table(
        {
            "source": pa.array([r[0] for r in rows], pa.string()),
            "day": pa.array([r[1] for r in rows], pa.date32()),
            "value": pa.array([r[2] for r in rows], pa.int64()),
        }
    )


EVENT_COLUMNS = {"source": "string", "day": "date", "value": "integer"}
D1, D2 = dt.date(2025, 1, 1), dt.date(2025, 1, 2)


def _seed_events(warehouse) -> None:
    warehouse.ensure_table("t.events", EVENT_COLUMNS)
    warehouse.append_arrow("t.events", _events([("crm", D1, 1), ("crm", D1, 2), ("crm", D2, 3), ("sales", D1, 4)]))


def _all_events(warehouse) -> list[tuple]:
    return warehouse.fetchall("select source, day, value from t.events order by source, day, value")


def test_replace_rows_replaces_only_the_rows_matching_every_column(warehouse_url):
    with connect(warehouse_url) as warehouse:
        _seed_events(warehouse)
        added = warehouse.replace_rows("t.events", {"source": "crm", "day": D1}, _events([("crm", D1, 10)]))
        assert added == 1
        assert _all_events(warehouse) == [("crm", D1, 10), ("crm", D2, 3), ("sales", D1, 4)]


def test_replace_rows_with_no_new_rows_deletes_the_matched_rows(warehouse_url):
    with connect(warehouse_url) as warehouse:
        _seed_events(warehouse)
        assert warehouse.replace_rows("t.events", {"day": D1}, _events([])) == 0
        assert _all_events(warehouse) == [("crm", D2, 3)]


def test_replace_rows_keeps_the_old_rows_when_the_new_ones_cannot_be_loaded(warehouse_url):
    with connect(warehouse_url) as warehouse:
        _seed_events(warehouse)
        bad = _events([("crm", D1, 10)]).append_column("no_such_column", pa.array([1]))
        with pytest.raises(Exception):
            warehouse.replace_rows("t.events", {"source": "crm", "day": D1}, bad)
        assert _all_events(warehouse) == [("crm", D1, 1), ("crm", D1, 2), ("crm", D2, 3), ("sales", D1, 4)]


def _events_nulls_last(warehouse) -> list[tuple]:
    """The events sorted here, nulls last: Spark sorts nulls first where DuckDB and PostgreSQL do not."""
    return sorted(_all_events(warehouse), key=lambda row: tuple((value is None, value) for value in row))


def _seed_events_with_nulls(warehouse) -> None:
    warehouse.ensure_table("t.events", EVENT_COLUMNS)
    warehouse.append_arrow("t.events", _events([("crm", D1, 1), ("crm", D2, None), (None, D1, 3), ("sales", D2, 4)]))


def test_delete_rows_deletes_where_the_condition_is_true_and_keeps_rows_where_it_is_null(warehouse_url):
    with connect(warehouse_url) as warehouse:
        _seed_events_with_nulls(warehouse)
        # `value > ?` is null for the row without a value, `source <> ?` for the one without a source.
        assert warehouse.delete_rows("t.events", "value > ? and source <> ?", (1, "sales")) == 0
        assert warehouse.delete_rows("t.events", "value >= ?", (4,)) == 1
        assert _events_nulls_last(warehouse) == [("crm", D1, 1), ("crm", D2, None), (None, D1, 3)]
        assert warehouse.delete_rows("t.events", "day = ? and value is null", (D2,)) == 1
        assert _events_nulls_last(warehouse) == [("crm", D1, 1), (None, D1, 3)]
        # Every row left (Spark truncates rather than rewrites), the table still there to append to.
        assert warehouse.delete_rows("t.events", "day = ?", (D1,)) == 2
        assert _events_nulls_last(warehouse) == []
        warehouse.append_arrow("t.events", _events([("crm", D1, 1)]))
        assert _events_nulls_last(warehouse) == [("crm", D1, 1)]


def test_delete_rows_takes_an_alias_for_a_correlated_condition(warehouse_url):
    with connect(warehouse_url) as warehouse:
        _seed_events_with_nulls(warehouse)
        warehouse.ensure_table("t.gone", {"source": "string"})
        warehouse.append_arrow("t.gone", pa.table({"source": ["crm", None]}))
        # A null source matches no gone source: that row stays, as SQL's DELETE keeps it.
        deleted = warehouse.delete_rows(
            "t.events", "exists (select 1 from t.gone as gone where gone.source = kept.source)", alias="kept")
        assert deleted == 2
        assert _events_nulls_last(warehouse) == [("sales", D2, 4), (None, D1, 3)]


@pytest.mark.spark
def test_a_local_spark_session_takes_its_heap_and_java_options_from_the_settings(tmp_path):
    """In a process of its own: Java fixes the heap as the JVM starts, and this process's runs already."""
    from warehouse.spark import DRIVER_MEMORY_SETTING, JAVA_OPTIONS_SETTING

    script = ("import sys; from warehouse.spark import local_spark_session; jvm = local_spark_session(sys.argv[1])._jvm;"
              " print(jvm.java.lang.Runtime.getRuntime().maxMemory() // 2**20, jvm.java.lang.System.getProperty('crmw.seen'))")
    settings = {DRIVER_MEMORY_SETTING: "640m", JAVA_OPTIONS_SETTING: "-Dcrmw.seen=yes -XX:TieredStopAtLevel=1"}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env={**os.environ, **settings},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    heap_mb, seen = result.stdout.split()[-2:]
    assert 600 <= int(heap_mb) <= 640 and seen == "yes", result.stdout


def test_a_spark_heap_setting_spark_cannot_take_is_named_before_spark_starts(tmp_path, monkeypatch):
    from warehouse.spark import DRIVER_MEMORY_SETTING, local_spark_session

    monkeypatch.setenv(DRIVER_MEMORY_SETTING, "4 GB")
    with pytest.raises(ValueError, match=r"CRMW_SPARK_DRIVER_MEMORY='4 GB': expected .* \(e\.g\. 4g\)"):
        local_spark_session(tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.spark
def test_spark_refuses_a_raw_delete_or_update_and_names_delete_rows(spark_url):
    with connect(spark_url) as warehouse:
        _seed_events(warehouse)
        for statement in ("delete from t.events where value = ?", "  UPDATE t.events set value = ?"):
            with pytest.raises(ValueError, match=r"no DELETE, UPDATE or MERGE; expected Warehouse.delete_rows\(table, where, params\)"):
                warehouse.execute(statement, (4,))
        assert warehouse.execute_count("insert into t.events (source, value) values (?, ?), ('x', 2)", ("new", 1)) == 2
        assert len(_all_events(warehouse)) == 6


@pytest.mark.spark
def test_spark_finishes_a_rewrite_cut_short_before_the_next_delete(spark_url, spark_warehouse):
    """A delete that died after writing the rows kept (marked whole) and while overwriting the
    table leaves the table short: the next delete on it restores the kept rows first."""
    _, session = spark_warehouse
    with connect(spark_url) as warehouse:
        _seed_events(warehouse)
        session.sql("create table t.events__crmw_rewrite using parquet as select * from t.events where source = 'crm'")
        session.sql("alter table t.events__crmw_rewrite set tblproperties ('crmw.rewrite_complete' = 'true')")
        session.sql("truncate table t.events")  # the overwrite cut short
        assert warehouse.delete_rows("t.events", "value = ?", (3,)) == 1
        assert _all_events(warehouse) == [("crm", D1, 1), ("crm", D1, 2)]
        assert warehouse.table_columns("t.events__crmw_rewrite") == []


@pytest.mark.spark
def test_spark_housekeeping_empties_tables_and_drops_a_rewrite_cut_short_before_the_table(spark_url, spark_warehouse):
    _, session = spark_warehouse
    with connect(spark_url) as warehouse:
        _seed_events(warehouse)
        warehouse.refresh_statistics("t.events")
        assert warehouse.reclaim_space() == "nothing to reclaim"
        # Unmarked: the copy was being written when it stopped, the table was never touched.
        session.sql("create table t.events__crmw_rewrite using parquet as select * from t.events where value = 1")
        assert warehouse.reclaim_space() == "finished interrupted rewrites: t.events__crmw_rewrite"
        assert len(_all_events(warehouse)) == 4 and warehouse.table_columns("t.events__crmw_rewrite") == []
        warehouse.empty_table("t.events")
        assert _all_events(warehouse) == []


@on_duckdb_and_postgres
def test_failure_inside_transaction_rolls_back_the_delete_and_the_inserts(warehouse_url):
    with connect(warehouse_url) as warehouse:
        _seed_events(warehouse)
        before = _all_events(warehouse)
        with pytest.raises(RuntimeError, match="boom"):
            with warehouse.transaction():
                warehouse.execute("delete from t.events where source = ?", ("crm",))
                warehouse.append_arrow("t.events", _events([("new", D2, 99)]))
                assert len(_all_events(warehouse)) == 2  # the delete happened inside
                raise RuntimeError("boom")
        assert _all_events(warehouse) == before
    with connect(warehouse_url) as reopened:
        assert _all_events(reopened) == before


@on_duckdb_and_postgres
def test_sql_error_inside_transaction_rolls_back_and_the_connection_stays_usable(warehouse_url):
    with connect(warehouse_url) as warehouse:
        _seed_events(warehouse)
        before = _all_events(warehouse)
        with pytest.raises(Exception):
            with warehouse.transaction():
                warehouse.execute("delete from t.events")
                warehouse.execute("select * from t.no_such_table")
        assert _all_events(warehouse) == before
        with warehouse.transaction():
            warehouse.execute("delete from t.events where value = ?", (4,))
        assert len(_all_events(warehouse)) == 3


def test_batches_appended_inside_a_transaction_are_not_held_until_it_commits(tmp_path):
    # A first load appends every batch it reads in one transaction: batches DuckDB kept alive until
    # the commit made the load's memory grow with the source (16 GB at a million customers).
    batch_bytes = 0
    with connect(f"duckdb:///{tmp_path / 'w.duckdb'}") as warehouse:
        warehouse.ensure_table("t.events", EVENT_COLUMNS)
        with warehouse.transaction():
            held_before = pa.total_allocated_bytes()
            for batch in range(10):
                data = _events([(f"a source named at some length, batch {batch}", D1, value) for value in range(20_000)])
                batch_bytes = data.nbytes
                warehouse.append_arrow("t.events", data)
                del data
            held_inside = pa.total_allocated_bytes() - held_before
        assert warehouse.fetchall("select count(*) from t.events") == [(200_000,)]
    assert held_inside < 2 * batch_bytes


@on_duckdb_and_postgres
def test_nested_transaction_joins_the_outer_one(warehouse_url):
    with connect(warehouse_url) as warehouse:
        _seed_events(warehouse)
        before = _all_events(warehouse)
        with pytest.raises(RuntimeError):
            with warehouse.transaction():
                warehouse.execute("delete from t.events where source = ?", ("sales",))
                with warehouse.transaction():
                    warehouse.append_arrow("t.events", _events([("inner", D1, 7)]))
                # The inner block ended without error: its work is still only part of the outer.
                raise RuntimeError("outer fails after the inner block finished")
        assert _all_events(warehouse) == before

        with warehouse.transaction():
            with warehouse.transaction():
                warehouse.append_arrow("t.events", _events([("inner", D1, 7)]))
            warehouse.execute("delete from t.events where source = ?", ("sales",))
    with connect(warehouse_url) as reopened:
        assert _all_events(reopened) == [("crm", D1, 1), ("crm", D1, 2), ("crm", D2, 3), ("inner", D1, 7)]


def test_ensure_table_adds_missing_columns_to_an_existing_table(warehouse_url):
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("raw_x.things", {"id": "integer", "name": "string"})
        warehouse.append_arrow("raw_x.things", pa.table({"id": [1], "name": ["a"]}))
        warehouse.ensure_table("raw_x.things", {"id": "integer", "name": "string", "seen_at": "timestamp", "price": "decimal"})
        warehouse.ensure_table("raw_x.things", {"id": "integer", "seen_at": "timestamp"})  # no-op
        assert warehouse.table_columns("raw_x.things") == ["id", "name", "seen_at", "price"]
        warehouse.append_arrow(
            "raw_x.things",
            pa.table({"id": [2], "seen_at": pa.array([dt.datetime(2025, 1, 1, 8)], pa.timestamp("us")), "price": pa.array([Decimal("1.5")], pa.decimal128(18, 4))}),
        )
        assert warehouse.fetchall("select id, name, seen_at, price from raw_x.things order by id") == [
            (1, "a", None, None),
            (2, None, dt.datetime(2025, 1, 1, 8), Decimal("1.5")),
        ]


ROUNDS = 5


def _ensure_at_once(url: str, start: "multiprocessing.synchronize.Barrier", errors: "multiprocessing.Queue") -> None:
    """In each round, wait for the other writers, then ensure the round's table and its index; wait
    again, then ensure it with one more column."""
    try:
        with connect(url) as warehouse:
            for round_number in range(ROUNDS):
                start.wait(timeout=60)
                warehouse.ensure_table(f"raw_round_{round_number}.things", {"id": "integer", "name": "string"})
                warehouse.ensure_index(f"raw_round_{round_number}.things", ["id"])
                start.wait(timeout=60)
                warehouse.ensure_table(f"raw_round_{round_number}.things", {"id": "integer", "seen_at": "timestamp"})
    except Exception as error:
        start.abort()  # the others stop waiting for this one
        errors.put(f"{type(error).__name__}: {error}")


def test_writers_ensuring_the_same_schema_table_column_and_index_at_once_all_succeed_on_postgres(postgres_url):
    """A parallel run's tasks create the shared tables (ml.model_runs, ml.trained_models, raw_meta's)
    together on a fresh warehouse. Four processes released at once, five rounds over: without the
    adapter's catalog lock most rounds failed on a unique violation in PostgreSQL's catalog."""
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    start = context.Barrier(4)
    writers = [context.Process(target=_ensure_at_once, args=(postgres_url, start, errors)) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=300)
    assert [writer.exitcode for writer in writers] == [0] * 4
    assert errors.empty(), errors.get()
    with connect(postgres_url) as warehouse:
        for round_number in range(ROUNDS):
            assert warehouse.table_columns(f"raw_round_{round_number}.things") == ["id", "name", "seen_at"]
            assert warehouse.fetchall("select count(*) from pg_indexes where schemaname = ?", (f"raw_round_{round_number}",)) == [(1,)]


def test_table_columns_of_a_missing_table_is_empty(warehouse_url):
    with connect(warehouse_url) as warehouse:
        assert warehouse.table_columns("nowhere.nothing") == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://x", "unknown kind of warehouse"),
        ("spark://local", "no folder"),
        ("spark://", "no folder"),
        ("spark:///", "no folder"),
        ("spark://master.example.com:7077", "a Spark cluster is not supported"),
        ("sc://connect.example.com:15002", "a Spark cluster is not supported"),
        ("sqlite:///tmp/w.db", "unknown kind of warehouse"),
        ("", "unknown kind of warehouse"),
        ("duckdb://", "no file path"),
        ("duckdb:///", "no file path"),
        ("postgresql://host/db", "needs a user, a host and a database name"),
        ("postgresql://user@host", "needs a user, a host and a database name"),
        ("postgresql://user@/db", "needs a user, a host and a database name"),
    ],
)
def test_bad_warehouse_url_names_the_setting_and_what_was_expected(url, problem):
    with pytest.raises(WarehouseUrlError) as caught:
        parse_warehouse_url(url)
    message = str(caught.value)
    assert message.startswith(f"WAREHOUSE_URL={url!r}: {problem}")
    assert "expected duckdb:///path/to/file.duckdb, postgresql://user:password@host:port/database or spark:///path/to/folder" in message
    assert "\n" not in message


def test_warehouse_url_from_the_environment_is_checked(monkeypatch):
    monkeypatch.setenv("WAREHOUSE_URL", "mysql://x")
    with pytest.raises(WarehouseUrlError, match=r"^WAREHOUSE_URL='mysql://x'"):
        connect()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://bob:hunter2xyzzy@db.example.com/crm",
        "postgresql://:hunter2xyzzy@db.example.com/crm",
        "postgresql://bob:hunter2xyzzy@/crm",
        "postgresql://bob:hunter2xyzzy@db.example.com",
        "postgresql://bob:hunter2@xyzzy@/crm",
        "postgresql://bob:hunter2/xyzzy@db.example.com",
    ],
)
def test_password_never_appears_in_a_warehouse_url_error(url):
    with pytest.raises(WarehouseUrlError) as caught:
        parse_warehouse_url(url)
    assert "hunter2" not in str(caught.value)
    assert "xyzzy" not in str(caught.value)
    assert "***" in str(caught.value)


def test_password_never_appears_when_postgres_cannot_be_reached():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the probe is released: nothing listens
    with pytest.raises(WarehouseUrlError) as caught:
        connect(f"postgresql://bob:hunter2xyzzy@127.0.0.1:{port}/crm")
    message = str(caught.value)
    assert "cannot connect to PostgreSQL" in message
    assert f"postgresql://bob:***@127.0.0.1:{port}/crm" in message
    assert "hunter2xyzzy" not in message


def test_duckdb_url_paths_come_back_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parsed = parse_warehouse_url("duckdb://data/w.duckdb")
    assert parsed.engine == "duckdb"
    assert parsed.duckdb_path == tmp_path / "data" / "w.duckdb"
    assert parse_warehouse_url(f"duckdb:///{tmp_path}/w.duckdb").duckdb_path == tmp_path / "w.duckdb"


def test_spark_url_folders_come_back_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = parse_warehouse_url("spark://data/spark")
    assert (relative.engine, relative.spark_folder, relative.url) == ("spark", tmp_path / "data" / "spark", f"spark://{tmp_path}/data/spark")
    assert parse_warehouse_url(f"spark://{tmp_path}/w").spark_folder == tmp_path / "w"
    assert parse_warehouse_url(parse_warehouse_url(f"spark://{tmp_path}/w").url).spark_folder == tmp_path / "w"


@pytest.mark.spark
def test_spark_refuses_a_session_on_another_folder_in_the_same_process(spark_url, tmp_path):
    with pytest.raises(WarehouseUrlError, match=r"a Spark session with its warehouse in .* already runs in this process"):
        connect(f"spark://{tmp_path / 'elsewhere'}")


def test_row_counts_lists_tables_and_views_of_the_given_schemas_with_counts(warehouse_url):
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("marts.orders", {"id": "integer"})
        warehouse.ensure_table("marts.empty_table", {"id": "integer"})
        warehouse.ensure_table("ml.scores", {"id": "integer"})
        warehouse.ensure_table("raw_sales.orders", {"id": "integer"})
        warehouse.append_arrow("marts.orders", pa.table({"id": [1, 2, 3]}))
        warehouse.append_arrow("ml.scores", pa.table({"id": [1]}))
        warehouse.append_arrow("raw_sales.orders", pa.table({"id": [1, 2]}))
        warehouse.execute("create view marts.big_orders as select * from marts.orders where id > 1")
        counts = warehouse.row_counts(["marts", "ml", "staging"])
    assert counts == [
        ("marts.big_orders", 2),
        ("marts.empty_table", 0),
        ("marts.orders", 3),
        ("ml.scores", 1),
    ]


def test_storage_bytes_are_reported_per_schema_and_table_with_the_databases_total(warehouse_url):
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table("marts.big", {"id": "integer", "label": "string"})
        warehouse.ensure_table("ml.small", {"id": "integer"})
        rows = 300_000
        warehouse.append_arrow("marts.big", pa.table({"id": range(rows), "label": [f"customer {n}" for n in range(rows)]}))
        warehouse.append_arrow("ml.small", pa.table({"id": [1]}))
        storage = warehouse.storage_bytes()
        tables = warehouse.table_bytes()
    # 300,000 distinct ids and labels take more than a megabyte on either engine, one row far less.
    assert storage["marts"] > 1_000_000 > storage["ml"]
    assert storage["total"] >= storage["marts"] + storage["ml"]
    # The one table of a schema holds the schema's bytes.
    assert tables["marts.big"] == storage["marts"] and tables["ml.small"] == storage["ml"]


DUCKDB_SETTINGS_QUERY = "select current_setting('memory_limit') as memory_limit, current_setting('threads') as threads"


def _duckdb_settings_seen_by_dbt(url: str, tmp_path: Path) -> dict:
    from dbt.cli.main import dbtRunner

    dbt_project = str(PROJECT_ROOT / "dbt_project")
    outcome = dbtRunner().invoke([
        "show", "--inline", DUCKDB_SETTINGS_QUERY, "--quiet", "--profiles-dir", dbt_project, "--project-dir", dbt_project,
        "--target-path", str(tmp_path / "dbt-target"), "--log-path", str(tmp_path / "dbt-logs"),
    ])
    assert outcome.success, outcome.exception
    table = outcome.result.results[0].agate_table
    return dict(zip(table.column_names, table.rows[0].values()))


def _duckdb_settings_seen_by(connection) -> dict:
    memory_limit, threads = connection.execute(DUCKDB_SETTINGS_QUERY).fetchone()
    return {"memory_limit": memory_limit, "threads": threads}


def test_duckdb_memory_limit_and_threads_come_from_the_settings_for_dbt_the_warehouse_and_the_extract(tmp_path, monkeypatch):
    monkeypatch.delenv("CRMW_DUCKDB_MEMORY_LIMIT", raising=False)
    monkeypatch.delenv("CRMW_DUCKDB_THREADS", raising=False)
    with duckdb_connection() as scratch:
        defaults = _duckdb_settings_seen_by(scratch)
        scratch.execute(f"set memory_limit = '{DEFAULT_DUCKDB_MEMORY_LIMIT}'")
        assert defaults == _duckdb_settings_seen_by(scratch)
        scratch.execute("reset threads")
        assert defaults == _duckdb_settings_seen_by(scratch)
    chosen = {"memory_limit": "953.6 MiB", "threads": 1}
    for name, settings in [("defaults", {}), ("chosen", {"CRMW_DUCKDB_MEMORY_LIMIT": "1GB", "CRMW_DUCKDB_THREADS": "1"})]:
        for variable, value in settings.items():
            monkeypatch.setenv(variable, value)
        url = f"duckdb:///{tmp_path / f'{name}.duckdb'}"
        monkeypatch.setenv("WAREHOUSE_URL", url)
        expected = defaults if not settings else chosen
        assert _duckdb_settings_seen_by_dbt(url, tmp_path) == expected
        # dbt's connection stays open in this process: DuckDB lets the warehouse open the same file
        # only with the same options.
        with connect(url) as warehouse:
            assert dict(zip(expected, warehouse.fetchall(DUCKDB_SETTINGS_QUERY)[0])) == expected
        with duckdb_connection() as scratch:
            assert _duckdb_settings_seen_by(scratch) == expected


@pytest.mark.parametrize("variable, value", [("CRMW_DUCKDB_MEMORY_LIMIT", "lots"), ("CRMW_DUCKDB_THREADS", "many")])
def test_a_duckdb_setting_duckdb_refuses_is_named_with_its_variable(variable, value, tmp_path, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(WarehouseSettingsError) as caught:
        connect(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    message = str(caught.value)
    assert f"{variable}={value!r}" in message and "expected a memory limit such as 4GB" in message
