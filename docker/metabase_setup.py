"""Set up the compose stack's Metabase (profile "bi") and add the warehouse to it, read through the BI
login: its first admin on a new Metabase, the warehouse once. Rerunning it changes nothing.

Only Metabase's HTTP API (open-source edition): GET /api/session/properties gives a new instance's
setup token, POST /api/setup creates the first admin and returns a session, POST /api/session logs
in once it exists, GET and POST /api/database list and add databases. Settings come from the
environment docker-compose.yml sets; a missing one ends the script naming it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

WAREHOUSE_NAME = "crm-warehouse"
WAIT_SECONDS = 600  # Metabase's first start migrates its settings database: minutes on a small machine


def setting(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"metabase_setup: {name} is not set; expected it in .env for the bi profile (see docker-compose.yml)")
    return value


def call(method: str, path: str, body: dict | None = None, session: str | None = None) -> object:
    request = urllib.request.Request(
        setting("METABASE_URL").rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"X-Metabase-Session": session} if session else {})},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return json.loads(text) if text else None


def wait_for_metabase() -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            if call("GET", "/api/health") == {"status": "ok"}:
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"metabase_setup: Metabase at {setting('METABASE_URL')} did not answer /api/health within {WAIT_SECONDS} s")
        time.sleep(5)


def admin_session() -> str:
    """A session of the first admin: created with the setup token on a new instance, else a login."""
    email, password = setting("METABASE_ADMIN_EMAIL"), setting("METABASE_ADMIN_PASSWORD")
    token = call("GET", "/api/session/properties").get("setup-token")
    if token:
        created = call("POST", "/api/setup", {
            "token": token,
            "user": {"email": email, "password": password, "first_name": "CRM", "last_name": "Admin", "site_name": "crm-warehouse"},
            "prefs": {"site_name": "crm-warehouse", "allow_tracking": False},
        })
        return created["id"]
    return call("POST", "/api/session", {"username": email, "password": password})["id"]


def add_warehouse(session: str) -> str:
    listed = call("GET", "/api/database", session=session)
    databases = listed["data"] if isinstance(listed, dict) else listed
    if any(database["name"] == WAREHOUSE_NAME for database in databases):
        return f"{WAREHOUSE_NAME} is already there"
    call("POST", "/api/database", {
        "engine": "postgres",
        "name": WAREHOUSE_NAME,
        "details": {
            "host": setting("WAREHOUSE_HOST"),
            "port": int(setting("WAREHOUSE_PORT")),
            "dbname": setting("WAREHOUSE_DB_NAME"),
            "user": setting("BI_DB_USER"),
            "password": setting("BI_DB_PASSWORD"),
            "ssl": False,
        },
    }, session=session)
    return f"added {WAREHOUSE_NAME}, read as {setting('BI_DB_USER')}"


def main() -> None:
    for name in ("METABASE_URL", "METABASE_ADMIN_EMAIL", "METABASE_ADMIN_PASSWORD", "WAREHOUSE_HOST", "WAREHOUSE_PORT",
                 "WAREHOUSE_DB_NAME", "BI_DB_USER", "BI_DB_PASSWORD"):
        setting(name)
    wait_for_metabase()
    try:
        print(f"metabase_setup: {add_warehouse(admin_session())}")
    except urllib.error.HTTPError as error:
        sys.exit(f"metabase_setup: {error.url}: HTTP {error.code}: {error.read().decode()[:500]}")


if __name__ == "__main__":
    main()
