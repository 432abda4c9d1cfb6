"""Acceptance on simulator truth: customer value predicted on a snapshot S ranks what customers
spent in the year after S. The shared `truth_history` (tests/conftest.py): the registered model
runs on the warehouse built as of S; realised spend is training_set's `spend_next_365_days` at S
in the warehouse built a year later. Spearman must reach 0.70 and beat the naive baseline (each
customer's spend in the year before S). The ceiling: the simulator's own expected spend over the
next 365 days on S (truth/customers.csv as of S)."""

from __future__ import annotations

from scipy.stats import spearmanr

from ml_tasks import tasks
from tests.conftest import HISTORY_SNAPSHOT
from tests.truth import person_of_customer
from warehouse import connect

MINIMUM_SPEARMAN = 0.70


def test_predicted_value_ranks_the_next_years_spend_on_simulator_truth(truth_history: dict) -> None:
    run = tasks.run_model("customer_value", HISTORY_SNAPSHOT, "truth", warehouse_url=truth_history["at_snapshot"])
    assert run["status"] == "published", run.get("message")
    with connect(truth_history["at_snapshot"]) as warehouse:
        predicted = warehouse.fetch_df(
            "select value.customer_id, value.predicted_spend_365d, value.value_tier, summary.monetary_last_365_days"
            " from ml.customer_value as value join features.customer_purchase_summary as summary"
            " on summary.customer_id = value.customer_id and summary.as_of_date = value.as_of_date"
            " where value.as_of_date = ?",
            (HISTORY_SNAPSHOT,),
        )
    with connect(truth_history["at_outcome"]) as warehouse:
        realised = warehouse.fetch_df(
            "select customer_id, cast(spend_next_365_days as double) as realised from features.training_set"
            " where as_of_date = ? and spend_next_365_days_is_complete",
            (HISTORY_SNAPSHOT,),
        )
    judged = realised.merge(predicted, on="customer_id", how="inner")
    ours = spearmanr(judged["predicted_spend_365d"], judged["realised"]).statistic
    naive = spearmanr(judged["monetary_last_365_days"], judged["realised"]).statistic
    people = person_of_customer(truth_history["at_snapshot"], truth_history["truth_at_snapshot"])
    with_oracle = judged.join(people["expected_spend_365d"], on="customer_id", how="inner")
    oracle = spearmanr(with_oracle["expected_spend_365d"], with_oracle["realised"]).statistic
    metrics = run["metrics"]
    print(f"\nvalue on truth at {HISTORY_SNAPSHOT}: {len(judged)} customers; Spearman with the next year's spend"
          f" {ours:.3f}, naive (last year's spend) {naive:.3f}, oracle ceiling {oracle:.3f} on {len(with_oracle)};"
          f" method {metrics.get('chosen_method')}, validation horizon {metrics.get('validation_horizon_days')}")
    print(judged.groupby("value_tier")["realised"].agg(["size", "mean"]).to_string())
    assert len(judged) >= 0.98 * len(realised)
    assert ours >= MINIMUM_SPEARMAN
    assert ours > naive
    assert oracle >= ours - 0.02
