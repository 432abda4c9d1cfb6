"""What the tests marked `spark` share: whether a local Spark session can start on this machine, a
module's session, and a comparison of a Spark warehouse's tables with another engine's."""

from __future__ import annotations

import math
import uuid
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytest

from warehouse import connect
from warehouse.spark import spark_missing


@contextmanager
def module_spark_session(folder: Path, app_name: str, untested: str) -> Iterator[Any]:
    """A test module's local Spark session with its warehouse in `folder`, stopped after the module
    unless another module started it (Spark keeps one per process); the module is skipped, naming
    what goes `untested`, where Spark cannot start."""
    reason = spark_missing()
    if reason:
        pytest.skip(f"{untested} is untested: {reason}")
    from pyspark.sql import SparkSession

    from warehouse.spark import local_spark_session

    already_running = SparkSession.getActiveSession() is not None
    session = local_spark_session(folder, app_name=app_name)
    yield session
    if not already_running:
        session.stop()


def table_rows(url: str, schemas: Sequence[str], left_out: set[str]) -> dict[str, list[dict]]:
    """Every table and view of `schemas` -> its rows as column -> value, the columns in `left_out`
    (what differs from run to run) dropped, values as every engine's Python types meet: uuids as text
    (Spark has none), decimals as floats."""
    quoted = ", ".join(f"'{schema}'" for schema in schemas)
    tables = {}
    with connect(url) as warehouse:
        for table, columns in warehouse.columns_by_table(f"table_schema in ({quoted})").items():
            columns = [column for column in columns if column not in left_out]
            rows = warehouse.fetchall(f"select {', '.join(columns)} from {table}")
            tables[table] = [dict(zip(columns, map(_comparable, row))) for row in rows]
    return tables


def _comparable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    return float(value) if isinstance(value, Decimal) else value


def table_differences(expected: dict[str, list[dict]], got: dict[str, list[dict]], engines: tuple[str, str]) -> list[str]:
    """One line per table that `expected` and `got` (from table_rows on the `engines` named) do not
    both hold, or whose rows differ as multisets, floats within a relative 1e-9 (engines sum in
    different orders): the row counts, else the first pair of rows that differ, by their columns."""
    lines = [f"{table}: only on {engines[0] if table in expected else engines[1]}" for table in sorted(set(expected) ^ set(got))]
    for table in sorted(set(expected) & set(got)):
        ours, theirs = expected[table], got[table]
        if len(ours) != len(theirs):
            lines.append(f"{table}: {len(ours)} rows on {engines[0]}, {len(theirs)} on {engines[1]}")
            continue
        for one, other in zip(sorted(ours, key=_sort_key), sorted(theirs, key=_sort_key)):
            differing = [f"{column}: {engines[0]} {value!r}, {engines[1]} {other.get(column)!r}"
                         for column, value in one.items() if not _same(value, other.get(column))]
            if differing:
                lines.append(f"{table} ({len(ours)} rows): {'; '.join(differing)}")
                break
    return lines


def _sort_key(row: dict) -> tuple:
    """Nulls first, floats rounded: rows equal within the tolerance sort alike on both engines."""
    return tuple((value is not None, round(value, 6) if isinstance(value, float) else value) for value in row.values())


def _same(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, float) and isinstance(theirs, float):
        return math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(ours) and math.isnan(theirs))
    return ours == theirs


__all__ = ["module_spark_session", "spark_missing", "table_differences", "table_rows"]
