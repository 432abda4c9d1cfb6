"""Entry points the DAG calls: run one registered model for an as-of date (read, fit and score,
check the quality floors, publish, record), check every model's params, publish BI's views.

How a run ends, as ml.model_runs records it:
- `published`: results replace the date's rows of every output table;
- `insufficient_data`: below the spec's minimum input (a new install, the first weeks): empty tables
  with the declared columns are published for the date, quality floors are not checked;
- `below_floor`: a held-out metric under its floor; nothing is published, the previous results stay,
  and QualityBelowFloor is raised (the DAG fails the task without retrying);
- `failed`: anything else went wrong; nothing is published and the error is raised.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from ml_tasks import performance, registry, warehouse_io
from ml_tasks.contract import InsufficientData, ModelSpec, QualityBelowFloor, build_settings
from warehouse import connect
from warehouse.bi import BI_SCHEMA

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

log = logging.getLogger(__name__)
# BI reads one schema, `bi`: views without personal data (warehouse/bi.py) over the marts as of the
# last build whose tests passed (warehouse/publish.py) and over the models' results. The schemas dbt
# builds in, the published copies and the models' own tables hold personal data: the pipeline's own.
NOT_BI_SCHEMAS = ["marts", "features", "published", "ml"]
# Contact details and consent: read by the CRM tool's role, never by BI's.
ACTIVATION_SCHEMAS = ["activation"]


def check_params(params: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Every model's settings from `params`: a bad one raises BadParameter naming it, before the run
    writes anything."""
    import dataclasses

    return {spec.name: dataclasses.asdict(build_settings(spec, params)) for spec in registry.MODELS}


def run_model(
    model: str | ModelSpec,
    as_of_date: dt.date,
    run_id: str,
    params: Mapping[str, Any] | None = None,
    warehouse_url: str | None = None,
) -> dict:
    """Run one model for `as_of_date`; returns its ml.model_runs row (metrics as a dict)."""
    import dataclasses

    spec = registry.model(model) if isinstance(model, str) else model
    settings = build_settings(spec, params)
    started = time.perf_counter()
    run: dict[str, Any] = {
        "model_name": spec.name,
        "model_version": spec.version,
        "run_id": run_id,
        "as_of_date": as_of_date,
        "parameters": dataclasses.asdict(settings),
        "rows_in": 0,
        "rows_out": 0,
        "metrics": {},
        "phase_seconds": {},
    }
    phases = run["phase_seconds"]
    # The warehouse connection is open to read and to publish, not while the model fits: DuckDB
    # keeps the pages it read cached while a connection lives, and a PostgreSQL session would idle.
    with peak_memory() as peak:
        try:
            with _timed(phases, "read"), connect(warehouse_url) as warehouse:
                engine = warehouse.engine
                inputs = _read_inputs(warehouse, spec, as_of_date, settings)
                plan = _training_plan(warehouse, spec, settings, as_of_date, inputs) if spec.is_trained else None
            primary = inputs[spec.reads[0].name]
            run["rows_in"] = len(primary)
            run["training_fingerprint"] = plan["fingerprint"] if plan else fingerprint(inputs)
            new_fit = None
            try:
                if len(primary) < spec.minimum_input_rows:
                    raise InsufficientData(
                        f"{spec.reads[0].name} has {len(primary)} rows for {as_of_date}, fewer than the"
                        f" {spec.minimum_input_rows} {spec.name} needs"
                    )
                module = importlib.import_module(spec.module)
                if plan is None:
                    with _timed(phases, "score"):
                        results, metrics = module.run(inputs, as_of_date, settings)
                else:
                    results, metrics, new_fit = _fit_and_score(module, spec, plan, inputs, as_of_date, settings, phases, engine)
                run["status"] = warehouse_io.PUBLISHED
            except InsufficientData as reason:
                results = {table.name: warehouse_io.empty_frame(table.columns) for table in spec.writes}
                metrics = {"insufficient_data": str(reason)}
                run.update(status=warehouse_io.INSUFFICIENT_DATA, message=str(reason))
            del inputs, primary
            _warn_drift(spec, metrics)
            run["metrics"] = metrics
            if run["status"] == warehouse_io.PUBLISHED:
                _check_floors(spec, metrics)
            run.update(seconds=round(time.perf_counter() - started, 3), peak_memory_mb=peak())
            with connect(warehouse_url) as warehouse:
                run["rows_out"] = warehouse_io.publish(
                    warehouse, spec.writes, results, as_of_date, run_id, spec.version, run, new_fit
                )
                if spec.outcomes:
                    performance.measure(warehouse, spec.name, spec.outcomes, as_of_date, run_id)
            for table in spec.exports:
                run.setdefault("exported", []).append(str(export_csv(table, results[table], as_of_date)))
        except QualityBelowFloor as error:
            _record(warehouse_url, run, started, peak, warehouse_io.BELOW_FLOOR, str(error))
            raise
        except Exception as error:
            _record(warehouse_url, run, started, peak, warehouse_io.FAILED, f"{type(error).__name__}: {error}"[:2000])
            raise
    log.info("%s for %s: %s, %s rows in, %s rows out", spec.name, as_of_date, run["status"], run["rows_in"], run["rows_out"])
    return run


def _read_inputs(warehouse, spec: ModelSpec, as_of_date: dt.date, settings: Any) -> dict[str, "pd.DataFrame"]:
    inputs = {
        table.name: warehouse_io.read_input(
            warehouse, table, as_of_date, getattr(settings, table.window_setting) if table.window_setting else None
        )
        for table in spec.reads
    }
    outputs = {table.name: table for table in spec.writes}
    for name in spec.reads_previous:
        inputs[f"previous:{name}"] = warehouse_io.read_previous(warehouse, outputs[name], as_of_date)
    return inputs


def _training_plan(warehouse, spec: ModelSpec, settings: Any, as_of_date: dt.date,
                   inputs: Mapping[str, "pd.DataFrame"]) -> dict[str, Any]:
    """Whether a trained model refits today: its training fingerprint now, the stored fit it would
    reuse (None: refit) and, when refitting, the training rows. A training table the model also
    reads to score is trained on the rows read (`inputs`, the window's if windowed): not read twice."""
    digest = settings_digest(settings)
    scored = {
        table.name: getattr(settings, table.window_setting) if table.window_setting else None
        for table in spec.trains_on if table in spec.reads
    }
    signature = warehouse_io.training_signature(warehouse, spec.trains_on, spec.training_signature, as_of_date, scored)
    current = warehouse_io.training_fingerprint(signature)
    stored = warehouse_io.load_fit(warehouse, spec.name, spec.version, digest, as_of_date)
    reason, change = None, None
    if stored is None:
        reason = "no stored fit of this version and settings"
    elif spec.retrain_max_age_days is not None and (as_of_date - stored["as_of_date"]).days > spec.retrain_max_age_days:
        reason = f"the fit as of {stored['as_of_date']} is older than {spec.retrain_max_age_days} days"
    elif stored["training_fingerprint"] != current:
        change = warehouse_io.training_change(stored["metrics"].get("training_signature"), signature)
        if change is None or change > spec.training_change_tolerance:
            moved = "a snapshot came or went" if change is None else f"an aggregate moved {change:.2%}"
            reason = f"training data changed since the fit as of {stored['as_of_date']} ({moved})"
    if not reason:
        stored["fitted"] = warehouse_io.unpickle_fit(stored.pop("artifact"))
    plan: dict[str, Any] = {"fingerprint": current, "signature": signature, "settings_digest": digest,
                            "stored": None if reason else stored, "reason": reason, "training_change": change}
    if reason:
        plan["training"] = {
            table.name: inputs[table.name] if table.name in scored else warehouse_io.read_training(
                warehouse, table, getattr(settings, table.sample_setting) if table.sample_setting else None
            )
            for table in spec.trains_on
        }
    return plan


def _fit_and_score(module, spec: ModelSpec, plan: dict[str, Any], inputs, as_of_date: dt.date, settings: Any,
                   phases: dict[str, float], engine: str):
    """Score with the stored fit, or refit first; returns (results, metrics, new ml.trained_models row
    or None). The seconds each took go to `phases`. `engine`: the warehouse's, which a spec that
    `fits_on_spark` is fitted on when it is Spark."""
    new_fit = None
    if plan["stored"] is None:
        log.info("%s: refitting (%s)", spec.name, plan["reason"])
        training = plan.pop("training")
        rows_read = {name: len(frame) for name, frame in training.items()}
        options = {"spark": spark_session(spec, engine)} if spec.fits_on_spark else {}
        with _timed(phases, "fit"):
            fitted, fit_metrics = module.fit(training, as_of_date, settings, **options)
        del training
        fit_metrics = {**fit_metrics, "training_rows_read": rows_read, "training_signature": plan["signature"]}
        new_fit = warehouse_io.fit_row(spec.name, plan["settings_digest"], plan["fingerprint"], fit_metrics, fitted)
        trained_as_of = as_of_date
    else:
        fitted, fit_metrics, trained_as_of = plan["stored"]["fitted"], plan["stored"]["metrics"], plan["stored"]["as_of_date"]
        log.info("%s: scoring with the fit as of %s (training data unchanged)", spec.name, trained_as_of)
    with _timed(phases, "score"):
        results, score_metrics = module.score(fitted, inputs, as_of_date, settings)
    metrics = {
        **fit_metrics,
        **score_metrics,
        "refitted": plan["stored"] is None,
        "refit_reason": plan["reason"],
        "trained_as_of": trained_as_of.isoformat(),
        "model_age_days": (as_of_date - trained_as_of).days,
        # How far the training data moved since the stored fit, within the spec's tolerance.
        "training_change_since_fit": plan["training_change"],
    }
    return results, metrics, new_fit


def spark_session(spec: ModelSpec, engine: str) -> Any:
    """The SparkSession a model that `fits_on_spark` is fitted on: on a Spark warehouse, the one the
    warehouse adapter started in this process (it outlives the connection); None elsewhere."""
    if engine != "spark":
        return None
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is None:
        raise RuntimeError(f"{spec.name}: the warehouse is Spark but no SparkSession is active in this process;"
                           " expected the one the warehouse adapter starts on connecting")
    return session


@contextmanager
def _timed(phases: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall seconds of the block to `phases[phase]`: where a model's time goes (reading,
    fitting, scoring), recorded with its run for the benchmark and anyone tuning it."""
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[phase] = round(phases.get(phase, 0.0) + time.perf_counter() - started, 3)


def settings_digest(settings: Any) -> str:
    import dataclasses
    import json

    return hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _warn_drift(spec: ModelSpec, metrics: dict) -> None:
    """A warning in the task log, and `drift_warnings` in the metrics, for each population
    stability index above the usual 'look at it' level."""
    from ml_tasks.monitoring import DRIFT_WARNING

    drifted = {name: value for name, value in (metrics.get("drift_psi") or {}).items() if value is not None and value > DRIFT_WARNING}
    if drifted:
        metrics["drift_warnings"] = sorted(drifted)
        for name, value in sorted(drifted.items()):
            log.warning("%s: %s drifted from the training data (population stability index %.3f > %.1f)", spec.name, name, value, DRIFT_WARNING)


def _check_floors(spec: ModelSpec, metrics: Mapping[str, Any]) -> None:
    """Raise QualityBelowFloor for the first floor a metric misses. A metric the model reports as
    None (too little held-out data to measure it) is not checked; the model says why in its metrics."""
    for metric, floor in spec.quality_floors.items():
        if metric not in metrics:
            raise KeyError(f"{spec.name}: metrics lack {metric!r}, which has a quality floor")
        value = metrics[metric]
        if value is not None and value < floor:
            raise QualityBelowFloor(
                f"{spec.name} {spec.version}: {metric} = {value:.4g} on held-out data, below its floor {floor:g};"
                " nothing published, the previous results stay"
            )


def _record(warehouse_url: str | None, run: dict, started: float, peak, status: str, message: str) -> None:
    run.update(status=status, message=message, seconds=round(time.perf_counter() - started, 3), peak_memory_mb=peak())
    try:
        with connect(warehouse_url) as warehouse:
            warehouse_io.record_run(warehouse, run)
    except Exception:  # the run's own error is the one to raise
        log.exception("could not record the %s run of %s in ml.model_runs", status, run["model_name"])


def fingerprint(inputs: Mapping[str, "pd.DataFrame"]) -> str:
    """A digest of the rows a model read, independent of their order: equal inputs, equal digest."""
    import numpy as np
    import pandas as pd

    digest = hashlib.sha256()
    for name in sorted(inputs):
        frame = inputs[name]
        digest.update(f"{name}:{','.join(map(str, frame.columns))}:{len(frame)};".encode())
        if len(frame):
            digest.update(np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy()).tobytes())
    return digest.hexdigest()[:32]


@contextmanager
def peak_memory(include_children: bool = False, interval: float = 0.05) -> Iterator[Any]:
    """Yields a function giving the highest resident memory (MB) the process (plus, with
    `include_children`, the processes it started: dbt runs as one) reached since entry, sampled by
    a background thread."""
    import psutil

    process = psutil.Process(os.getpid())

    def resident() -> int:
        total = process.memory_info().rss
        for child in process.children(recursive=True) if include_children else ():
            try:
                total += child.memory_info().rss
            except psutil.Error:  # it ended between the listing and the reading
                pass
        return total

    highest = [resident()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            highest[0] = max(highest[0], resident())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: round(max(highest[0], resident()) / 2**20, 1)
    finally:
        stop.set()
        sampler.join()


def publish(as_of_date: dt.date, run_id: str, warehouse_url: str | None = None,
            environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Bring the `published` marts level with the build just tested (rows written per mart are
    returned), refresh the `_latest` view of every table a registered model writes and BI's views
    over both (schema `bi`), in one transaction, with BI's read grant (schema `bi` alone) and the
    activation schema's own (the role a CRM tool imports the contact list with).

    BI's views need the key salt (CRMW_BI_KEY_SALT): on PostgreSQL, where BI tools read the
    warehouse, publish is refused without it (BiSettingsError, before anything is written); on
    DuckDB, where they open `crmw bi-export`'s file instead, the views are made only when it is set."""
    from warehouse.bi import SALT_SETTING, drop_bi_views, key_salt, publish_bi_views
    from warehouse.publish import publish_marts

    environ = os.environ if environ is None else environ
    bi_role = environ.get("CRMW_BI_ROLE", "crmw_bi_reader")
    with connect(warehouse_url) as warehouse:
        salt = key_salt(environ) if warehouse.engine == "postgres" or environ.get(SALT_SETTING) else None
        warehouse_io.ensure_outputs(warehouse, warehouse_io.latest_tables(registry.output_tables()))
        with warehouse.transaction():
            drop_bi_views(warehouse)
            written = publish_marts(warehouse, as_of_date, run_id)
            warehouse_io.publish_latest_views(warehouse, registry.output_tables(), registry.VIEWS)
            if salt:
                publish_bi_views(warehouse, bi_sources(), salt, as_of_date)
            # Installs from before schema `bi` let BI read the published marts and the models' tables
            # (and before write-audit-publish, the schemas dbt builds in).
            warehouse.revoke_read_only(bi_role, NOT_BI_SCHEMAS)
            warehouse.grant_read_only(bi_role, [BI_SCHEMA])
            warehouse.grant_read_only(environ.get("CRMW_ACTIVATION_ROLE", "crmw_activation_reader"), ACTIVATION_SCHEMAS)
    if not salt:
        log.info("schema %s not refreshed: %s is not set (BI tools open `crmw bi-export`'s file on DuckDB)", BI_SCHEMA, SALT_SETTING)
    return written


def bi_sources() -> dict[str, str]:
    """BI's views (name -> what each reads): every published mart; every model table of schema `ml`,
    the runs and the models' measured quality, each with its `_latest` view; the registry's views."""
    from warehouse.bi import bi_tables
    from warehouse.publish import marts_of

    dated = [table.name for table in warehouse_io.latest_tables(registry.output_tables())
             if table.name.startswith(f"{warehouse_io.ML_SCHEMA}.")]
    return bi_tables([mart.name for mart in marts_of()], [*dated, *(f"{name}_latest" for name in dated), *registry.VIEWS])


def bi_export(out: "Path | None" = None, as_of_date: dt.date | None = None, warehouse_url: str | None = None,
              environ: Mapping[str, str] | None = None) -> tuple["Path", dict[str, int]]:
    """Write BI's views without personal data (schema `bi`, warehouse/bi.py, made again here with
    ages counted at `as_of_date`, by default the newest published date) into a DuckDB file of their
    own: `out`, by default <export dir>/bi/crm_bi.duckdb. Returns the file and its rows per table.
    Raises BiSettingsError for the salt, ValueError for a warehouse that is not DuckDB or has
    published nothing."""
    from warehouse.bi import export_duckdb, key_salt
    from warehouse.publish import PUBLISH_LOG

    salt = key_salt(environ)
    out = out or export_dir(environ) / "bi" / "crm_bi.duckdb"
    with connect(warehouse_url) as warehouse:
        if warehouse.engine != "duckdb":
            raise ValueError(
                f"bi export: the warehouse is {warehouse.engine}; expected DuckDB (on PostgreSQL, BI tools connect"
                " through the read-only BI login: README, 'Connect a BI tool')"
            )
        published = warehouse.fetchall(f"select max(as_of_date) from {PUBLISH_LOG}") if warehouse.table_columns(PUBLISH_LOG) else [(None,)]
        if published[0][0] is None:
            raise ValueError("bi export: nothing is published in this warehouse yet; expected a run of crm_daily first")
        return out, export_duckdb(warehouse, bi_sources(), out, salt, as_of_date or published[0][0])


def export_dir(environ: Mapping[str, str] | None = None) -> "Path":
    """Where files for other tools go: CRMW_EXPORT_DIR, by default .local/exports in the project."""
    from pathlib import Path

    from warehouse import PROJECT_ROOT

    environ = os.environ if environ is None else environ
    return Path(environ.get("CRMW_EXPORT_DIR") or PROJECT_ROOT / ".local" / "exports").resolve()


def export_csv(table: str, frame: "pd.DataFrame", as_of_date: dt.date) -> "Path":
    """Write one date's published rows of `table` to `<export dir>/<schema>/<table>_<date>.csv`
    (a rerun of the date replaces the file; a reader never sees half of one)."""
    schema, _, name = table.partition(".")
    folder = export_dir() / schema
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{as_of_date.isoformat()}.csv"
    partial = path.with_suffix(".csv.partial")
    frame.to_csv(partial, index=False, lineterminator="\n")
    os.replace(partial, path)
    return path
