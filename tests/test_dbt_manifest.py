"""The manifest Cosmos renders the DAG from must describe the dbt project as it is now."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

DBT_PROJECT = PROJECT_ROOT / "dbt_project"
MANIFEST = DBT_PROJECT / "target" / "manifest.json"


def _shape(manifest_path: Path) -> dict:
    """What the DAG depends on: each node's SQL checksum, dependencies, config and docs."""
    manifest = json.loads(manifest_path.read_text())
    return {
        unique_id: {
            "checksum": node.get("checksum", {}).get("checksum"),
            "depends_on": sorted(node.get("depends_on", {}).get("nodes", [])),
            "materialized": node.get("config", {}).get("materialized"),
            "schema": node.get("schema"),
            "description": node.get("description"),
            "columns": {name: column.get("description") for name, column in node.get("columns", {}).items()},
        }
        for unique_id, node in {**manifest["nodes"], **manifest["sources"]}.items()
    }


def test_manifest_built_by_make_matches_a_fresh_dbt_parse(tmp_path: Path) -> None:
    assert MANIFEST.exists(), "dbt_project/target/manifest.json is missing: run 'make manifest'"
    dbt = Path(sys.executable).parent / "dbt"
    subprocess.run(
        [str(dbt), "parse", "--quiet", "--profiles-dir", ".", "--project-dir", ".", "--target-path", str(tmp_path)],
        cwd=DBT_PROJECT,
        check=True,
    )
    assert _shape(MANIFEST) == _shape(tmp_path / "manifest.json"), (
        "dbt_project/target/manifest.json is stale: the DAG would render old models; run 'make manifest'"
    )


def test_a_runs_date_in_the_environment_reuses_the_parse_and_a_var_still_wins(tmp_path: Path) -> None:
    """The DAG passes the date as CRMW_AS_OF_DATE, not as a var: changed vars make dbt parse the
    whole project again (~6 s a run), a changed environment variable only the files using it."""
    from crmw.scratch import run_dbt

    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    compiled = tmp_path / "dbt-target" / "compiled" / "crm_warehouse" / "models" / "features" / "feature_dates.sql"

    def compile_on(day: dt.date, *args: str) -> tuple[str, str]:
        result = run_dbt(url, "compile", "--select", "feature_dates", *args, tmp_path=tmp_path, as_of_date=day)
        return result.stdout, compiled.read_text()

    compile_on(dt.date(2025, 3, 1))
    log, sql = compile_on(dt.date(2025, 3, 2))
    assert "Unable to do partial parsing" not in log
    assert "cast('2025-03-02' as date)" in sql and "2025-03-01" not in sql
    _, sql = compile_on(dt.date(2025, 3, 2), "--vars", "{as_of_date: '2025-03-03'}")
    assert "cast('2025-03-03' as date)" in sql and "2025-03-02" not in sql
