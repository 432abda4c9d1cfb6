"""The manifest Cosmos renders the DAG from must describe the dbt project as it is now."""

from __future__ import annotations

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
