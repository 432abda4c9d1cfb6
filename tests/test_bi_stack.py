"""The compose stack's BI profile, as far as this machine can run it (no Docker engine): its services
read from docker-compose.yml; Metabase's set-up script run against a local stand-in of the Metabase
API endpoints it uses; the warehouse's first-start script run by psql on the throwaway PostgreSQL,
whose BI login then reads what publish grants and nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from warehouse import connect

ROOT = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = ROOT / "docker" / "metabase_setup.py"
BI_LOGIN_SCRIPT = ROOT / "docker" / "warehouse-initdb" / "10-bi-login.sh"
BI_SERVICES = ("metabase-db", "metabase", "metabase-setup")


def test_the_bi_profile_runs_metabase_set_up_by_a_script_of_the_repository_with_the_bi_login() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in BI_SERVICES:
        assert services[name]["profiles"] == ["bi"], f"{name} starts only with --profile bi"
    # No other service joins the profile (the Celery workers have a profile of their own).
    assert all("bi" not in service.get("profiles", []) for name, service in services.items() if name not in BI_SERVICES)
    assert services["metabase"]["image"].startswith("metabase/metabase:v")
    assert services["metabase"]["environment"]["MB_DB_HOST"] == "metabase-db"
    setup = services["metabase-setup"]
    assert setup["volumes"] == ["./docker/metabase_setup.py:/opt/metabase_setup.py:ro"]
    assert setup["command"] == ["python", "/opt/metabase_setup.py"] and setup["restart"] == "no"
    assert setup["environment"]["BI_DB_USER"] == services["warehouse-db"]["environment"]["BI_DB_USER"] == "${BI_DB_USER:-crmw_bi}"
    assert setup["environment"]["WAREHOUSE_HOST"] == "warehouse-db"
    assert "./docker/warehouse-initdb:/docker-entrypoint-initdb.d:ro" in services["warehouse-db"]["volumes"]
    assert "metabase-db-data" in compose["volumes"]


class FakeMetabase(BaseHTTPRequestHandler):
    """The endpoints the set-up script calls, as Metabase's API reference gives them."""

    state: dict = {}

    def _reply(self, body: object, status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        state = self.state
        if self.path == "/api/health":
            self._reply({"status": "ok"})
        elif self.path == "/api/session/properties":
            self._reply({"setup-token": None if state["admin"] else "token-1"})
        elif self.path == "/api/database" and self.headers.get("X-Metabase-Session") == "session-1":
            self._reply({"data": state["databases"], "total": len(state["databases"])})
        else:
            self._reply({"message": "not found or not allowed"}, 404)

    def do_POST(self) -> None:  # noqa: N802
        state = self.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/setup" and body["token"] == "token-1" and not state["admin"]:
            state["admin"] = body["user"]
            self._reply({"id": "session-1"})
        elif self.path == "/api/session" and state["admin"] and (body["username"], body["password"]) == (
                state["admin"]["email"], state["admin"]["password"]):
            self._reply({"id": "session-1"})
        elif self.path == "/api/database" and self.headers.get("X-Metabase-Session") == "session-1":
            state["databases"].append(body)
            self._reply({"id": len(state["databases"]), **body})
        else:
            self._reply({"message": "refused"}, 400)

    def log_message(self, *args) -> None:
        pass


def test_metabase_setup_creates_the_admin_adds_the_warehouse_once_and_a_rerun_changes_nothing() -> None:
    FakeMetabase.state = {"admin": None, "databases": []}
    server = HTTPServer(("127.0.0.1", 0), FakeMetabase)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ, "METABASE_URL": f"http://127.0.0.1:{server.server_port}", "METABASE_ADMIN_EMAIL": "admin@example.com",
        "METABASE_ADMIN_PASSWORD": "a long admin passphrase", "WAREHOUSE_HOST": "warehouse-db", "WAREHOUSE_PORT": "5432",
        "WAREHOUSE_DB_NAME": "crm_warehouse", "BI_DB_USER": "crmw_bi", "BI_DB_PASSWORD": "bi-secret",
    }
    try:
        first = subprocess.run([sys.executable, str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        again = subprocess.run([sys.executable, str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        missing = subprocess.run([sys.executable, str(SETUP_SCRIPT)], env={**env, "BI_DB_PASSWORD": ""},
                                 capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert first.returncode == 0 and "added crm-warehouse, read as crmw_bi" in first.stdout, first.stderr
    assert again.returncode == 0 and "crm-warehouse is already there" in again.stdout, again.stderr
    [database] = FakeMetabase.state["databases"]
    assert database["engine"] == "postgres"
    assert {key: database["details"][key] for key in ("host", "port", "dbname", "user", "password")} == {
        "host": "warehouse-db", "port": 5432, "dbname": "crm_warehouse", "user": "crmw_bi", "password": "bi-secret"}
    assert FakeMetabase.state["admin"]["email"] == "admin@example.com"
    assert missing.returncode != 0 and "BI_DB_PASSWORD is not set" in missing.stderr


@pytest.mark.postgres
def test_the_warehouses_first_start_makes_a_bi_login_that_reads_what_publish_grants_and_nothing_else(postgres_url: str) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql (PostgreSQL's client) is not installed: the postgres image runs this script with it")
    server = urlsplit(postgres_url)
    login = f"bi_login_{os.getpid()}"
    env = {
        **os.environ, "PGHOST": server.hostname, "PGPORT": str(server.port), "PGPASSWORD": server.password or "",
        "POSTGRES_USER": server.username, "POSTGRES_DB": server.path.lstrip("/"), "BI_DB_USER": login, "BI_DB_PASSWORD": "bi-secret",
    }
    with connect(postgres_url) as warehouse:
        warehouse.execute("create schema bi")
        warehouse.execute("create table bi.kpi (day date, revenue numeric)")
        warehouse.execute("create schema marts")
        warehouse.execute("create table marts.dim_customers (email text)")
    try:
        made = subprocess.run(["bash", str(BI_LOGIN_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stdout + made.stderr
        with connect(postgres_url) as warehouse:
            warehouse.grant_read_only("crmw_bi_reader", ["bi"])  # what publish does
        as_bi = server._replace(netloc=f"{login}:bi-secret@{server.hostname}:{server.port}").geturl()
        with psycopg.connect(as_bi, autocommit=True) as bi:
            assert bi.execute("select count(*) from bi.kpi").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                bi.execute("select * from marts.dim_customers")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                bi.execute("insert into bi.kpi values (current_date, 1)")
        skipped = subprocess.run(["bash", str(BI_LOGIN_SCRIPT)], env={**env, "BI_DB_PASSWORD": ""}, capture_output=True, text=True)
        assert skipped.returncode == 0 and "no BI login made" in skipped.stdout
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'drop role if exists "{login}"')
