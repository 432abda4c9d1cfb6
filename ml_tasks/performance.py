"""How published scores turned out: once the outcome window after an as-of date has passed, the
realised quality of the churn probabilities and spend predictions published on that date
(`ml.model_performance`, one row per model, scored date, horizon and metric).

The outcome is read from the orders the warehouse knows on the measuring date
(`features.orders_as_known`, the spans that hold that date): churned = no order at all in the `horizon_days` after
the scored date (the training label's definition); spend = net revenue of revenue orders in that
window. Each scored date is measured once, on the first run whose date closes its window, so a
backfill (or the first run after an outage) fills every date it can; a rerun of that run measures
them again and replaces its rows. The scores' tables keep a week of daily dates and month-ends
before it (contract.HistoryPolicy): windows of 90 and 365 days are measured on month-ends. A
customer whose key identity resolution later retired (merged into another customer,
`marts.customer_key_aliases`) is measured by the orders of the customer who took over the key's
records.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any, Sequence

from ml_tasks.contract import OutcomeCheck, OutputTable
from ml_tasks.warehouse_io import ML_SCHEMA, as_date, ensure_outputs, to_arrow
from warehouse import Warehouse
from warehouse.adapter import qualified, quote_identifier, sql_type

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)
ORDERS = "features.orders_as_known"
KEY_ALIASES = "marts.customer_key_aliases"
MODEL_PERFORMANCE = OutputTable(
    f"{ML_SCHEMA}.model_performance",
    {
        "model_name": "string",
        "scored_model_version": "string",
        "score_column": "string",
        "horizon_days": "integer",
        "metric": "string",
        "value": "double",
        "customers": "integer",
        "measured_as_of": "date",
    },
    "Realised quality of the scores published on as_of_date, measured on measured_as_of (the first"
    " run after the outcome window closed): churn roc_auc, brier, base_rate_brier, predicted_rate,"
    " realised_rate; spend spearman, mae, rmse, predicted_total, realised_total, bias_share.",
)


def measure(warehouse: Warehouse, model_name: str, checks: Sequence[OutcomeCheck], as_of_date: dt.date, run_id: str) -> int:
    """Measure every scored date of `model_name` whose outcome window closed by `as_of_date` and
    that no run of an earlier date measured (a rerun of this date measures again); returns the rows written."""
    import pandas as pd

    ensure_outputs(warehouse, [MODEL_PERFORMANCE])
    if not warehouse.table_columns(ORDERS):
        return 0
    written = 0
    for check in checks:
        if not warehouse.table_columns(check.table):
            continue
        for scored_on in _dates_to_measure(warehouse, model_name, check, as_of_date):
            frame = _scores_and_outcomes(warehouse, check, scored_on, as_of_date)
            if frame.empty:
                continue
            metrics = churn_metrics(frame) if check.kind == "churn" else spend_metrics(frame)
            rows = pd.DataFrame([
                {
                    "model_name": model_name,
                    "scored_model_version": str(frame["model_version"].iloc[0]),
                    "score_column": check.column,
                    "horizon_days": check.horizon_days,
                    "metric": metric,
                    "value": value,
                    "customers": len(frame),
                    "measured_as_of": as_of_date,
                }
                for metric, value in metrics.items()
            ])
            stamps = {"as_of_date": scored_on, "run_id": run_id, "model_version": str(frame["model_version"].iloc[0])}
            written += warehouse.replace_rows(
                MODEL_PERFORMANCE.name,
                {"as_of_date": scored_on, "model_name": model_name, "score_column": check.column, "horizon_days": check.horizon_days},
                to_arrow(MODEL_PERFORMANCE, rows, stamps),
            )
            log.info("%s %s scored on %s, realised over %s days: %s", model_name, check.column, scored_on, check.horizon_days, metrics)
    return written


def _dates_to_measure(warehouse: Warehouse, model_name: str, check: OutcomeCheck, as_of_date: dt.date) -> list[dt.date]:
    last_closed = as_of_date - dt.timedelta(days=check.horizon_days)
    scored = [as_date(row[0]) for row in warehouse.fetchall(
        f"select distinct as_of_date from {qualified(check.table)} where as_of_date <= ? order by 1", (last_closed,))]
    measured = {as_date(row[0]) for row in warehouse.fetchall(
        f"select distinct as_of_date from {qualified(MODEL_PERFORMANCE.name)}"
        " where model_name = ? and score_column = ? and horizon_days = ? and measured_as_of < ?",
        (model_name, check.column, check.horizon_days, as_of_date))}
    return [day for day in scored if day not in measured]


def _scores_and_outcomes(warehouse: Warehouse, check: OutcomeCheck, scored_on: dt.date, as_of_date: dt.date) -> "pd.DataFrame":
    """customer_id, model_version, score, orders and spend in the window, as known on `as_of_date`."""
    window_end = scored_on + dt.timedelta(days=check.horizon_days)
    current_key = "scores.customer_id"
    aliases = ""
    if warehouse.table_columns(KEY_ALIASES):
        current_key = "coalesce(aliases.customer_id, scores.customer_id)"
        aliases = f"left join {qualified(KEY_ALIASES)} as aliases on scores.customer_id = aliases.retired_customer_id"
    double = sql_type(warehouse.engine, "double")
    return warehouse.fetch_df(
        f"""
        with outcomes as (
            select
                customer_id,
                count(*) as orders,
                sum(case when is_revenue then net_amount else 0 end) as spend
            from {qualified(ORDERS)}
            where known_from <= ? and (known_until is null or known_until > ?)
                and order_date > ? and order_date <= ?
            group by customer_id
        )
        select
            scores.customer_id,
            scores.model_version,
            cast(scores.{quote_identifier(check.column)} as {double}) as score,
            coalesce(outcomes.orders, 0) as orders,
            cast(coalesce(outcomes.spend, 0) as {double}) as spend
        from {qualified(check.table)} as scores
        {aliases}
        left join outcomes on {current_key} = outcomes.customer_id
        where scores.as_of_date = ? and scores.{quote_identifier(check.column)} is not null
        order by scores.customer_id
        """,
        (as_of_date, as_of_date, scored_on, window_end, scored_on),
    )


def churn_metrics(frame: "pd.DataFrame") -> dict[str, Any]:
    import numpy as np
    from sklearn.metrics import brier_score_loss, roc_auc_score

    churned = (frame["orders"].to_numpy() == 0).astype(int)
    probability = frame["score"].to_numpy(dtype=float)
    rate = float(churned.mean())
    return {
        "roc_auc": round(float(roc_auc_score(churned, probability)), 6) if 0 < churned.sum() < len(churned) else None,
        "brier": round(float(brier_score_loss(churned, probability)), 6),
        "base_rate_brier": round(rate * (1 - rate), 6),
        "predicted_rate": round(float(np.mean(probability)), 6),
        "realised_rate": round(rate, 6),
    }


def spend_metrics(frame: "pd.DataFrame") -> dict[str, Any]:
    import numpy as np
    from scipy.stats import spearmanr

    predicted = frame["score"].to_numpy(dtype=float)
    realised = frame["spend"].to_numpy(dtype=float)
    error = predicted - realised
    spearman = spearmanr(predicted, realised).statistic if np.ptp(predicted) and np.ptp(realised) else None
    return {
        "spearman": None if spearman is None else round(float(spearman), 6),
        "mae": round(float(np.mean(np.abs(error))), 4),
        "rmse": round(float(np.sqrt(np.mean(error**2))), 4),
        "predicted_total": round(float(predicted.sum()), 2),
        "realised_total": round(float(realised.sum()), 2),
        "bias_share": round(float(error.sum() / realised.sum()), 6) if realised.sum() else None,
    }

