"""A small model that follows the ML contract, for testing the runner and the warehouse door
without the cost of a real model: it scores each customer's spend against the mean."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pandas as pd

from ml_tasks.contract import InputTable, InsufficientData, ModelSpec, OutcomeCheck, OutputTable, check_range


@dataclass(frozen=True)
class ToySettings:
    # Reported as the held-out quality metric, so a test can put it under the floor.
    reported_quality: float = field(default=0.9, metadata={"doc": "quality the toy reports"})
    window_days: int = 30
    fail: bool = False

    def __post_init__(self) -> None:
        check_range("reported_quality", self.reported_quality, minimum=0, maximum=1)
        check_range("window_days", self.window_days, minimum=1, kind=int)


SCORES = OutputTable(
    "ml.toy_scores",
    {"customer_id": "string", "spend": "double", "above_mean": "boolean", "last_order_date": "date", "scored_at": "timestamp"},
    thinned_history=True,
)
SUMMARY = OutputTable("ml.toy_summary", {"customers": "integer", "mean_spend": "double"})

SPEC = ModelSpec(
    name="toy",
    version="toy-1",
    module="tests.toy_model",
    settings=ToySettings,
    reads=(InputTable("features.toy_features", window_column="last_order_date", window_setting="window_days"),),
    writes=(SCORES, SUMMARY),
    reads_previous=("ml.toy_summary",),
    minimum_input_rows=3,
    quality_floors={"heldout_quality": 0.5},
)


def run(inputs: dict[str, pd.DataFrame], as_of_date: dt.date, settings: ToySettings) -> tuple[dict, dict]:
    if settings.fail:
        raise RuntimeError("the toy model was told to fail")
    features = inputs["features.toy_features"].sort_values("customer_id").reset_index(drop=True)
    if features["spend"].sum() == 0:
        raise InsufficientData("no spend to score")
    mean = float(features["spend"].mean())
    scores = pd.DataFrame(
        {
            "customer_id": features["customer_id"],
            "spend": features["spend"],
            "above_mean": features["spend"] > mean,
            "last_order_date": features["last_order_date"],
            "scored_at": pd.Timestamp(as_of_date) + pd.Timedelta(hours=6, minutes=30, seconds=15),
        }
    )
    summary = pd.DataFrame({"customers": [len(features)], "mean_spend": [mean]})
    previous = inputs["previous:ml.toy_summary"]
    metrics = {
        "heldout_quality": settings.reported_quality,
        "previous_customers": int(previous["customers"].iloc[0]) if len(previous) else None,
    }
    return {SCORES.name: scores, SUMMARY.name: summary}, metrics


# ---- a trained toy: fitted on a training table now and then, scoring every day --------------------

@dataclass(frozen=True)
class TrainedToySettings:
    reported_quality: float = 0.9
    training_max_rows: int = 1_000_000

    def __post_init__(self) -> None:
        check_range("reported_quality", self.reported_quality, minimum=0, maximum=1)
        check_range("training_max_rows", self.training_max_rows, minimum=1, kind=int)


CHURN = OutputTable("ml.toy_churn", {"customer_id": "string", "churn_probability": "double"})

TRAINED_SPEC = ModelSpec(
    name="toy_trained",
    version="toy-trained-1",
    module="tests.toy_model",
    settings=TrainedToySettings,
    reads=(InputTable("features.toy_features"),),
    writes=(CHURN,),
    minimum_input_rows=1,
    quality_floors={"heldout_quality": 0.5},
    trains_on=(InputTable("features.toy_training", sample_setting="training_max_rows"),),
    training_signature=("count(*)", "sum(case when churned then 1 else 0 end)"),
    retrain_max_age_days=30,
    outcomes=(OutcomeCheck(CHURN.name, "churn_probability", "churn", 10),),
)


@dataclass(frozen=True)
class ToyFit:
    churn_rate: float
    reference: dict


def fit(training: dict[str, pd.DataFrame], as_of_date: dt.date, settings: TrainedToySettings) -> tuple[ToyFit, dict]:
    rows = training["features.toy_training"]
    if rows.empty:
        raise InsufficientData("no training rows")
    rate = float(rows["churned"].mean())
    reference = {"spend": rows["spend"].to_numpy(dtype=float)}
    return ToyFit(rate, reference), {"heldout_quality": settings.reported_quality, "fitted_rows": len(rows)}


def score(fitted: ToyFit, inputs: dict[str, pd.DataFrame], as_of_date: dt.date, settings: TrainedToySettings) -> tuple[dict, dict]:
    from ml_tasks.monitoring import drift_report

    features = inputs["features.toy_features"].sort_values("customer_id").reset_index(drop=True)
    churn = pd.DataFrame({"customer_id": features["customer_id"], "churn_probability": fitted.churn_rate})
    drift = drift_report(fitted.reference, {"spend": features["spend"].to_numpy(dtype=float)})
    return {CHURN.name: churn}, {"drift_psi": drift}
