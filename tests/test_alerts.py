"""Where a failure alert goes: the webhook URL the Airflow connection `crmw_alerts` names, in the two
forms the README gives, none without the connection, and an error naming the connection for one that
names no webhook. The alert of a failed run reaching a receiver is test_dag_failures.py's."""

from __future__ import annotations

import pytest

from reporting.alerts import webhook_url


@pytest.mark.parametrize(("connection", "url"), [
    ("https://hooks.example.com/services/T0/B0/XYZ", "https://hooks.example.com/services/T0/B0/XYZ"),
    ("http://127.0.0.1:8765/alerts", "http://127.0.0.1:8765/alerts"),
    ('{"conn_type": "http", "host": "https://hooks.example.com/services/T0/B0/XYZ"}', "https://hooks.example.com/services/T0/B0/XYZ"),
])
def test_the_connection_names_the_webhook_as_a_uri_or_as_an_http_connections_host(
        monkeypatch: pytest.MonkeyPatch, connection: str, url: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CRMW_ALERTS", connection)
    assert webhook_url() == url


def test_without_the_connection_there_is_no_webhook_and_a_connection_to_something_else_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_CRMW_ALERTS", raising=False)
    assert webhook_url() is None
    monkeypatch.setenv("AIRFLOW_CONN_CRMW_ALERTS", "postgresql://user@warehouse/crm")
    with pytest.raises(ValueError, match="Airflow connection 'crmw_alerts': expected a webhook URL .* got type 'postgres'"):
        webhook_url()
