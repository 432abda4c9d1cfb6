"""Acceptance on simulator truth: churn probabilities published on a snapshot S rank who churned
in the 90 days after S. The shared `truth_history` (tests/conftest.py: 4,000 customers, 13 months
to S, then carried on a year): the registered model runs as the DAG runs it, on the warehouse
built as of S; the label is training_set's `is_churned` at S in the warehouse built a year later,
over its rows at S. Beside it, the ceiling: an oracle scoring each customer from the truth the
simulator held on S (churned already: 1; else 1 - (1 - h)^90 with h its daily hazard from
truth/churn_model.json's formula)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from ml_tasks import tasks
from tests.conftest import HISTORY_SNAPSHOT
from tests.truth import person_of_customer
from warehouse import connect

MINIMUM_ROC_AUC = 0.80


def oracle_churn_probability(people: pd.DataFrame, truth) -> pd.Series:
    """P(churn within 90 days of S) from the generating model, per row of truth/customers.csv as of S."""
    model = json.loads((truth / "churn_model.json").read_text())
    effects = model["effects"]
    lifted = (
        effects["lost_engagement"] * (1 - people["engagement"])
        + effects["bad_service_experiences"] * people["bad_service_score"]
        + effects["price_sensitivity"] * people["price_sensitivity"]
    )
    hazard = np.minimum(people["persona"].map(model["baseline_by_persona"]) * np.exp(lifted), 0.5)
    churned = (people["churn_date"] != "") & (people["churn_date"] <= HISTORY_SNAPSHOT.isoformat())
    return pd.Series(np.where(churned, 1.0, 1 - (1 - hazard) ** 90), index=people.index)


def test_churn_scores_rank_who_churns_on_simulator_truth(truth_history: dict) -> None:
    run = tasks.run_model("churn_propensity", HISTORY_SNAPSHOT, "truth", warehouse_url=truth_history["at_snapshot"])
    assert run["status"] == "published", run.get("message")
    with connect(truth_history["at_snapshot"]) as warehouse:
        scores = warehouse.fetch_df("select customer_id, churn_probability, risk_band from ml.churn_scores where as_of_date = ?",
                                    (HISTORY_SNAPSHOT,))
    with connect(truth_history["at_outcome"]) as warehouse:
        labels = warehouse.fetch_df("select customer_id, is_churned from features.training_set where as_of_date = ?",
                                    (HISTORY_SNAPSHOT,))
    judged = labels.merge(scores, on="customer_id", how="inner")
    churned = judged["is_churned"].astype(int).to_numpy()
    auc = roc_auc_score(churned, judged["churn_probability"])

    people = person_of_customer(truth_history["at_snapshot"], truth_history["truth_at_snapshot"])
    oracle = oracle_churn_probability(people, truth_history["truth_at_snapshot"]).reindex(judged["customer_id"]).to_numpy()
    known = ~np.isnan(oracle)
    oracle_auc = roc_auc_score(churned[known], oracle[known])
    metrics = run["metrics"]
    print(f"\nchurn on truth at {HISTORY_SNAPSHOT}: {len(judged)} customers ({len(labels)} labelled), churn rate"
          f" {churned.mean():.3f}; ROC-AUC {auc:.3f} (oracle ceiling {oracle_auc:.3f} on {known.sum()});"
          f" chosen {metrics.get('chosen_model')}; validation {({k: v for k, v in metrics.items() if k.startswith('test_')})}")
    print(judged.groupby("risk_band")["is_churned"].agg(["size", "mean"]).to_string())
    assert len(judged) >= 0.98 * len(labels)
    assert auc >= MINIMUM_ROC_AUC
    assert oracle_auc >= auc - 0.02  # sanity: nothing should beat the truth by more than noise
