"""What the weekly `crm_maintenance` DAG does, each step a function of its own:

- `thin_model_history`: every model's as-of dates past the ML history policy are deleted, as each
  model's run does when it publishes (ml_tasks/warehouse_io.py: thin_history); here for the models
  that have not run since (one retired, or failing), so their old dates do not stay for ever;
- `prune_files`: run reports, exported files (the contact lists hold names and contacts) and Airflow
  task logs older than their retention are deleted, and the reports' index written again;
- `vacuum_analyze`: PostgreSQL reclaims the space of rows the daily delete+insert left dead and
  refreshes the planner's statistics (`VACUUM (ANALYZE)`); DuckDB writes its log into the file
  (`CHECKPOINT`).

Raw versions are never deleted: a full refresh, the history tables and the training labels are
built from them.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from warehouse import connect

if TYPE_CHECKING:
    from ml_tasks.contract import ModelSpec

DAY_SECONDS = 86_400


@dataclass(frozen=True)
class Retention:
    """Days a kind of file is kept after it was last written, from the environment."""

    reports: int = 400
    exports: int = 30
    logs: int = 30

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "Retention":
        environ = os.environ if environ is None else environ
        days = {}
        for kind, variable in (("reports", "CRMW_REPORT_RETENTION_DAYS"), ("exports", "CRMW_EXPORT_RETENTION_DAYS"),
                               ("logs", "CRMW_LOG_RETENTION_DAYS")):
            text = environ.get(variable)
            if text is None:
                continue
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"{variable}={text!r}: expected a whole number of days, 1 or more")
            days[kind] = int(text)
        return cls(**days)


def thin_model_history(as_of_date: dt.date, warehouse_url: str | None = None,
                       models: Sequence["ModelSpec"] | None = None) -> dict[str, int]:
    """Apply the ML history policy to the outputs of `models` (every registered one) as of
    `as_of_date`; returns the rows deleted per model."""
    from ml_tasks import registry
    from ml_tasks.warehouse_io import thin_history

    deleted = {}
    with connect(warehouse_url) as warehouse:
        for spec in registry.MODELS if models is None else models:
            tables = [table for table in spec.writes if table.thinned_history and warehouse.table_columns(table.name)]
            with warehouse.transaction():
                deleted[spec.name] = thin_history(warehouse, tables, spec.name, as_of_date)
    return deleted


def prune_files(folders: Mapping[str, Path], retention: Retention, now: float | None = None) -> dict[str, int]:
    """Delete the files of each folder (`reports`, `exports`, `logs`: a Retention field each) last
    written more days ago than its retention, and the folders that leaves empty; returns the files
    deleted per folder. The reports' index is written again for the reports kept."""
    from reporting.run_report import INDEX, render_index

    now = time.time() if now is None else now
    deleted = {}
    for kind, folder in folders.items():
        cutoff = now - getattr(retention, kind) * DAY_SECONDS
        # A folder listed inside another (the reports inside the exports) keeps its own retention.
        nested = [other for other in folders.values() if other != folder and other.is_relative_to(folder)]
        count = 0
        if folder.is_dir():
            for path in sorted(folder.rglob("*"), reverse=True):  # files before the folders holding them
                if any(path.is_relative_to(other) for other in nested):
                    continue
                if path.is_file() and path.name != INDEX and path.stat().st_mtime < cutoff:
                    path.unlink()
                    count += 1
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            if kind == "reports":
                (folder / INDEX).write_text(render_index(folder), encoding="utf-8")
        deleted[kind] = count
    return deleted


def vacuum_analyze(warehouse_url: str | None = None) -> str:
    with connect(warehouse_url) as warehouse:
        return warehouse.reclaim_space()
