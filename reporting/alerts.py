"""Tell people when a task of crm_daily fails for good (after its retries): one short message (DAG,
task, date, error, the link to the task's log) to the task log, and posted as JSON to a webhook when
the Airflow connection `crmw_alerts` exists (Slack's incoming webhooks read its `text`; the other
fields are there for a receiver that routes by them).

The connection names the webhook in either of two ways:
- its URI, e.g. `AIRFLOW_CONN_CRMW_ALERTS='https://hooks.slack.com/services/T0/B0/XYZ'` (Airflow
  reads the scheme as the connection type and the path as its schema);
- an HTTP connection made in the UI whose Host is the whole URL.
A webhook that cannot be reached is logged, never raised: the task has failed already, and an
alert's own failure must not hide why.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any, Mapping

ALERT_CONNECTION = "crmw_alerts"
POST_TIMEOUT_SECONDS = 10
# The error's first line, cut: a message is read on a phone; the log has the rest.
ERROR_CHARACTERS = 300

log = logging.getLogger(__name__)


def failure_fields(context: Mapping[str, Any]) -> dict[str, str]:
    """What a failure alert says, from a task's Airflow context."""
    task_instance = context["ti"]
    error = context.get("exception")
    lines = str(error).strip().splitlines() if error is not None else []
    summary = f"{type(error).__name__}: {lines[0] if lines else ''}".strip() if error is not None else "no error recorded"
    if len(summary) > ERROR_CHARACTERS:
        summary = summary[: ERROR_CHARACTERS - 1] + "…"
    return {
        "dag_id": task_instance.dag_id,
        "task_id": task_instance.task_id,
        "logical_date": str(context.get("ds") or ""),
        "run_id": str(task_instance.run_id),
        "error": summary,
        "log_url": task_instance.log_url,
    }


def failure_message(fields: Mapping[str, str]) -> str:
    return (f"{fields['dag_id']} failed: task {fields['task_id']}, date {fields['logical_date']} "
            f"(run {fields['run_id']}): {fields['error']}. Log: {fields['log_url']}")


def webhook_url() -> str | None:
    """The URL the connection `crmw_alerts` names, or None where there is no such connection."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = Connection.get(ALERT_CONNECTION)
    except AirflowNotFoundException:
        return None
    host = connection.host or ""
    if "://" in host:
        return host
    if connection.conn_type not in ("http", "https") or not host:
        raise ValueError(
            f"Airflow connection {ALERT_CONNECTION!r}: expected a webhook URL (https://host/path) as its URI,"
            f" or as the Host of an HTTP connection; got type {connection.conn_type!r} and host {host!r}"
        )
    port = f":{connection.port}" if connection.port else ""
    path = f"/{connection.schema.lstrip('/')}" if connection.schema else ""
    return f"{connection.conn_type}://{host}{port}{path}"


def alert_on_failure(context: Mapping[str, Any]) -> None:
    """A task's `on_failure_callback`: log the alert, and post it where `crmw_alerts` says."""
    fields = failure_fields(context)
    message = failure_message(fields)
    log.error("%s", message)
    try:
        url = webhook_url()
        if url is None:
            return
        request = urllib.request.Request(
            url, data=json.dumps({"text": message, **fields}).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT_SECONDS) as response:
            response.read()
    except (OSError, ValueError) as error:
        log.warning("could not post the failure alert to Airflow connection %r: %s", ALERT_CONNECTION, error)
