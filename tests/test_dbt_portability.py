"""The same dbt project on DuckDB and PostgreSQL, built from the same raw rows, gives the same marts."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import pytest

from tests.conftest import ENGINES
from warehouse.adapter import connect
from warehouse.publish import MANIFEST

FLOAT_TOLERANCE = 1e-9


def column_profiles(url: str) -> dict[str, dict[str, dict]]:
    """Per mart and column: row count, non-null count, distinct count, min, max and (numbers) sum.
    When dbt wrote a row (`_built_at`) differs from build to build and is left out.

    Computed in Python over the fetched rows rather than in SQL: text min and max then follow one
    ordering instead of each server's collation, and the sums add exact Decimals."""
    with connect(url) as warehouse:
        marts = [name for (name,) in warehouse.fetchall(
            "select table_name from information_schema.tables where table_schema = 'marts' order by table_name")]
        profiles = {}
        for mart in marts:
            columns = [name for (name,) in warehouse.fetchall(
                "select column_name from information_schema.columns"
                f" where table_schema = 'marts' and table_name = '{mart}' and column_name <> '_built_at'"
                " order by ordinal_position")]
            rows = warehouse.fetchall(f"select {', '.join(columns)} from marts.{mart}")
            profiles[mart] = {column: _profile([row[i] for row in rows]) for i, column in enumerate(columns)}
    return profiles


def _profile(values: list) -> dict:
    present = [value for value in values if value is not None]
    profile = {"count": len(values), "non_null": len(present), "distinct": len(set(present)),
               "min": min(present, default=None), "max": max(present, default=None)}
    if present and all(isinstance(value, (int, float, Decimal)) and not isinstance(value, bool) for value in present):
        profile["sum"] = sum(present)
    return profile


def _same(left, right) -> bool:
    if isinstance(left, float) or isinstance(right, float):
        return math.isclose(float(left), float(right), rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    return left == right


def test_every_mart_column_profiles_the_same_on_duckdb_and_postgres(built_warehouses, request: pytest.FixtureRequest):
    profiles = {engine: column_profiles(built_warehouses(engine, request)) for engine in ENGINES}
    duckdb, postgres = profiles["duckdb"], profiles["postgres"]
    assert sorted(duckdb) == sorted(postgres)
    assert {mart: list(columns) for mart, columns in duckdb.items()} == {mart: list(columns) for mart, columns in postgres.items()}
    differences = [
        f"{mart}.{column}.{measure}: duckdb {value!r}, postgres {postgres[mart][column][measure]!r}"
        for mart, columns in duckdb.items()
        for column, profile in columns.items()
        for measure, value in profile.items()
        if not _same(value, postgres[mart][column].get(measure))
    ]
    assert not differences, "\n".join(differences)
    # Keys retire only when a later build merges customers: one build has none.
    assert all(profile["count"] for mart, columns in duckdb.items() if mart != "customer_key_aliases"
               for profile in columns.values()), "a mart is empty"


@pytest.mark.postgres
def test_every_table_dbt_builds_on_postgresql_has_planner_statistics(built_warehouses, request: pytest.FixtureRequest):
    """Each model and seed is analyzed as it is built (macros/analyze_for_planner.sql): a later
    model is never planned on PostgreSQL's guess for a table without statistics."""
    url = built_warehouses("postgres", request)
    with connect(url) as warehouse:
        unanalyzed = warehouse.fetchall(
            "select schemaname || '.' || relname from pg_stat_user_tables"
            " where schemaname in ('staging', 'intermediate', 'marts', 'features', 'activation')"
            " and last_analyze is null and last_autoanalyze is null order by 1"
        )
        built = warehouse.fetchall(
            "select count(*) from pg_stat_user_tables where schemaname in ('staging', 'marts', 'features')"
        )[0][0]
    assert built == len(_stored_nodes(("staging", "marts", "features")))
    assert unanalyzed == [], f"tables dbt built without statistics: {unanalyzed}"


def _stored_nodes(schemas: tuple[str, ...]) -> list[str]:
    """The models and seeds dbt stores as tables in `schemas` (views and ephemeral models store none)."""
    nodes = json.loads(MANIFEST.read_text())["nodes"].values()
    return [node["name"] for node in nodes
            if node["resource_type"] in ("model", "seed") and node["config"]["schema"] in schemas
            and node["config"]["materialized"] not in ("view", "ephemeral")]
