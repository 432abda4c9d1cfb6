"""crm_daily's checks that fail a run: a stale source fails the freshness check (which holds back
publish), and a bad model param fails the run, and the rest of its date range, before anything is written;
the failed task's alert reaches a webhook.
A short simulation: these check what stops, not what the models make of the data. A source that
fails its extract is test_cli.py's; a dbt test that fails the build, test_dag_end_to_end.py's."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

from crmw.airflow_runner import airflow_environment, prepare_airflow
from extract_load.contract import load_contract
from extract_load.load import ExtractSettings, extract_system
from tests.airflow_runs import crmw, simulate_clean_sources, task_states
from warehouse import connect

pytestmark = pytest.mark.airflow

START, DAYS = dt.date(2025, 1, 1), 12


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_clean_sources(tmp_path_factory.mktemp("sources"), START, DAYS)


def test_source_freshness_task_fails_naming_a_source_loaded_days_ago(sources: Path, airflow_home: Path, tmp_path: Path) -> None:
    # Freshness reads raw alone: a warehouse with every source extracted once, the orders loaded
    # five days ago by their load times.
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    settings = ExtractSettings(source_dir=sources, sales_db_url=f"sqlite:///{sources / 'sales.sqlite'}")
    for system in load_contract().systems:
        extract_system(system, START, "freshness", settings=settings, warehouse_url=url)
    with connect(url) as warehouse:
        warehouse.execute("update raw_sales.orders set _loaded_at = _loaded_at - interval 5 days")
    env = airflow_environment(
        {**os.environ, "WAREHOUSE_URL": url, "CRMW_SOURCE_DIR": str(sources), "AIRFLOW_HOME": str(airflow_home)}
    )
    prepare_airflow(env)  # the metadata DB and pool, as `crmw run` or `crmw airflow` make them
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    # `airflow tasks test` runs the one task (for today, so its gate would let it run) and exits 0
    # whatever the task's outcome: the outcome is read from its output.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "tasks", "test", "crm_daily", "source_freshness", today],
        env=env,
        capture_output=True,
        text=True,
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert re.search(r"ERROR STALE freshness of raw_sales\.orders", output), output[-3000:]
    assert re.search(r"PASS freshness of raw_sales\.order_lines", output)
    assert "dbt invocation completed with errors" in output


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """A local HTTP receiver named by the Airflow connection `crmw_alerts`: the JSON bodies posted to it."""
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_CRMW_ALERTS", f"http://127.0.0.1:{server.server_port}/hooks/crm-alerts")
    yield received
    server.shutdown()


def test_a_bad_model_param_fails_the_run_before_anything_is_written_and_ends_the_range(
        sources: Path, airflow_home: Path, tmp_path: Path, webhook: list[dict]) -> None:
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    run_date = START + dt.timedelta(days=10)
    result = crmw(url, sources, airflow_home, "run", "--from", run_date.isoformat(), "--to", (run_date + dt.timedelta(days=1)).isoformat(),
                  "--param", "association_rules__top_k_offers=0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [message] = result.stderr.strip().splitlines()
    assert "param association_rules__top_k_offers: got 0, expected between 1 and 100" in message, message
    assert [line.split()[4] for line in result.stdout.splitlines() if line.startswith("crmw: running")] == [run_date.isoformat()]
    states = task_states(airflow_home, run_date)
    assert states["check_model_params"] == "failed"
    assert states["extract_sales.orders"] == "upstream_failed"
    with connect(url) as warehouse:
        assert warehouse.fetchall("select count(*) from information_schema.tables where table_schema like 'raw%'") == [(0,)]
    # The failed task's alert reached the webhook the connection names: one message, for that task.
    [alert] = webhook
    assert (alert["dag_id"], alert["task_id"], alert["logical_date"]) == ("crm_daily", "check_model_params", run_date.isoformat())
    assert alert["error"].startswith("AirflowFailException: param association_rules__top_k_offers: got 0")
    assert alert["log_url"].endswith(f"/dags/crm_daily/runs/{quote(alert['run_id'])}/tasks/check_model_params?try_number=1")
    assert alert["text"] == (f"crm_daily failed: task check_model_params, date {run_date} (run {alert['run_id']}):"
                             f" {alert['error']}. Log: {alert['log_url']}")
