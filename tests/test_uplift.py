"""Campaign uplift (ml_tasks/uplift.py) on small synthetic campaigns: a planted uplift that grows
with the discount share, members split 80/20 into treatment and control as the simulator does."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from ml_tasks import uplift
from ml_tasks.contract import CUSTOMER_FEATURE_NUMBERS, BadParameter, InsufficientData

AS_OF = dt.date(2025, 6, 30)
FIRST_START = dt.date(2025, 1, 2)


# The synthetic campaigns hold about 720 held-out controls (3 campaigns of 1,200 members, a fifth control).
SMALL = uplift.UpliftSettings(min_holdout_controls=500)


def customers(count: int, seed: int) -> pd.DataFrame:
    """Customers with every feature column; discount_share (0-1) is the one that matters."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({column: rng.gamma(2.0, 2.0, count) for column in CUSTOMER_FEATURE_NUMBERS})
    frame["discount_share"] = rng.random(count)
    frame["marketing_opt_in"] = rng.random(count) < 0.7
    frame["is_crm_contact"] = True
    frame["favourite_channel"] = rng.choice(["web", "store", "phone"], count)
    frame.insert(0, "customer_id", [f"c{number:05d}" for number in range(count)])
    return frame


def planted_uplift(frame: pd.DataFrame, strength: float) -> np.ndarray:
    return strength * frame["discount_share"].to_numpy()


def campaigns(campaign_count: int = 12, members: int = 1_200, strength: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Members of `campaign_count` campaigns, two weeks apart: a fifth held as control, conversion
    0.05 without the campaign and 0.05 + strength x discount_share with it."""
    rng = np.random.default_rng(seed)
    people = customers(4 * members, seed)
    rows = []
    for number in range(campaign_count):
        start = FIRST_START + dt.timedelta(days=14 * number)
        chosen = people.iloc[np.sort(rng.choice(len(people), members, replace=False))].copy()
        treated = rng.random(members) >= 0.2
        conversion = 0.05 + treated * planted_uplift(chosen, strength)
        chosen.insert(0, "campaign_id", f"K{number:03d}")
        chosen.insert(1, "campaign_start_date", pd.Timestamp(start))
        chosen["as_of_date"] = pd.Timestamp(start.replace(day=1) - dt.timedelta(days=1))
        chosen["is_treatment"] = treated
        chosen["has_converted"] = rng.random(members) < conversion
        chosen["is_churned"] = rng.random(members) < 0.3
        rows.append(chosen)
    return pd.concat(rows, ignore_index=True)[list(uplift.TRAINING_COLUMNS)]


@pytest.fixture(scope="module")
def planted() -> dict:
    training = campaigns()
    fitted, metrics = uplift.fit({uplift.TRAINING: training}, AS_OF, SMALL)
    current = customers(2_000, seed=99)
    results, score_metrics = uplift.score(fitted, {uplift.FEATURES: current}, AS_OF, SMALL)
    return {"training": training, "metrics": metrics, "current": current, "scores": results[uplift.SCORES],
            "score_metrics": score_metrics}


def test_predicted_uplift_follows_the_planted_uplift(planted):
    scores = planted["scores"].merge(planted["current"][["customer_id", "discount_share"]], on="customer_id")
    truth = planted_uplift(scores, 0.2)
    assert spearmanr(scores["predicted_uplift"], truth).statistic > 0.9
    top = scores["uplift_band"] == "high"
    # The planted uplift of the top fifth of discount shares averages 0.18, of the bottom half 0.05.
    assert truth[top].mean() > 0.15 and truth[scores["uplift_band"] == "low"].mean() < 0.06
    assert scores["predicted_uplift"].mean() == pytest.approx(truth.mean(), abs=0.03)
    assert np.allclose(scores["predicted_uplift"], scores["conversion_if_treated"] - scores["conversion_if_not_treated"], atol=2e-6)


def test_beats_random_targeting_on_held_out_campaigns(planted):
    metrics = planted["metrics"]
    assert metrics["holdout_campaigns"] == 3 and metrics["training_campaigns"] == 9
    assert metrics["holdout_members"] == 3 * 1_200
    assert metrics["holdout_qini_z"] > 3
    assert metrics["holdout_top_fifth_observed_uplift"] > metrics["holdout_observed_uplift"]
    # Churn labels here are coin flips: their ranking is random targeting.
    assert abs(metrics["churn_baseline_qini_z"]) < 3


def test_scores_every_customer_once_with_ranks_bands_and_consent(planted):
    scores, current = planted["scores"], planted["current"]
    assert list(scores.columns) == list(uplift.SCORE_COLUMNS)
    assert sorted(scores["customer_id"]) == sorted(current["customer_id"])
    assert sorted(scores["uplift_rank"]) == list(range(1, len(current) + 1))
    best = scores.sort_values("uplift_rank")
    assert best["predicted_uplift"].is_monotonic_decreasing
    assert best["uplift_band"].head(400).eq("high").all() and best["uplift_band"].tail(1000).eq("low").all()
    consent = scores.set_index("customer_id")["marketing_opt_in"]
    assert consent.equals(current.set_index("customer_id")["marketing_opt_in"].astype("boolean").loc[consent.index])
    assert set(planted["score_metrics"]["drift_psi"]) >= {"predicted_uplift", "discount_share"}


def test_same_rows_in_another_order_give_the_same_model_and_scores(planted):
    shuffled = planted["training"].sample(frac=1.0, random_state=7)
    fitted, metrics = uplift.fit({uplift.TRAINING: shuffled}, AS_OF, SMALL)
    results, _ = uplift.score(fitted, {uplift.FEATURES: planted["current"].sample(frac=1.0, random_state=8)}, AS_OF,
                              SMALL)
    assert metrics == planted["metrics"]
    pd.testing.assert_frame_equal(results[uplift.SCORES], planted["scores"])


def test_without_uplift_the_model_does_not_stand_out_from_random_targeting():
    _, metrics = uplift.fit({uplift.TRAINING: campaigns(strength=0.0, seed=1)}, AS_OF, SMALL)
    assert abs(metrics["holdout_qini_z"]) < uplift.QUALITY_FLOORS["holdout_qini_z"] + 1


def test_campaigns_starting_after_the_as_of_date_are_not_learnt_from(planted):
    ninth_start = FIRST_START + dt.timedelta(days=14 * 9)
    _, metrics = uplift.fit({uplift.TRAINING: planted["training"]}, ninth_start, uplift.UpliftSettings(min_group_conversions=10, min_holdout_controls=400))
    assert metrics["campaigns"] == 10


def test_too_few_campaigns_is_insufficient_data():
    with pytest.raises(InsufficientData, match="5 ended campaigns"):
        uplift.fit({uplift.TRAINING: campaigns(campaign_count=5)}, AS_OF, SMALL)


def test_too_few_control_conversions_is_insufficient_data():
    training = campaigns(members=300)
    with pytest.raises(InsufficientData, match="held-out campaigns' control members hold"):
        uplift.fit({uplift.TRAINING: training}, AS_OF, SMALL)


def test_too_few_held_out_controls_to_judge_the_model_is_insufficient_data():
    with pytest.raises(InsufficientData, match=r"the 3 held-out campaigns hold 7\d\d control members; judging campaign uplift needs 1000"):
        uplift.fit({uplift.TRAINING: campaigns()}, AS_OF, uplift.UpliftSettings())


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="missing columns is_treatment"):
        uplift.fit({uplift.TRAINING: campaigns(campaign_count=2).drop(columns="is_treatment")}, AS_OF, SMALL)


@pytest.mark.parametrize("field, value", [
    ("holdout_share", 0.9), ("holdout_share", 1), ("min_campaigns", 1), ("inverse_regularisation", 0.0),
    ("random_orderings", 5), ("high_band_share", -0.1), ("medium_band_share", 0.9),
])
def test_bad_settings_are_rejected(field, value):
    with pytest.raises(BadParameter, match=field):
        uplift.UpliftSettings(**{field: value})


def test_qini_is_zero_for_a_constant_score_and_positive_for_a_perfect_one():
    treated = np.array([True, True, True, True, False, False] * 50)
    converted = np.array([True, False, False, False, False, False] * 50)
    assert uplift.qini_coefficient(np.zeros(len(treated)), treated, converted) == pytest.approx(0.0)
    perfect = (treated & converted).astype(float)
    assert uplift.qini_coefficient(perfect, treated, converted) > 0
    assert uplift.qini_coefficient(-perfect, treated, converted) < 0


def _write(url: str, table: str, frame: pd.DataFrame) -> None:
    """A frame as a warehouse table, as dbt would have built it."""
    import pyarrow as pa

    from warehouse import connect

    kinds = {"b": "boolean", "f": "double", "i": "integer", "M": "date"}
    columns = {column: kinds.get(frame[column].dtype.kind, "string") for column in frame.columns}
    with connect(url) as warehouse:
        warehouse.ensure_table(table, columns)
        warehouse.append_arrow(table, pa.Table.from_pandas(frame, preserve_index=False))


def test_the_dag_task_trains_stores_and_scores_on_both_engines(warehouse_url, planted):
    """The task code on each engine: training rows read from the warehouse, the fit stored, every
    current customer scored; the next day scores with the stored fit."""
    from ml_tasks import registry, tasks
    from warehouse import connect

    _write(warehouse_url, uplift.TRAINING, planted["training"])
    for day in (AS_OF, AS_OF + dt.timedelta(days=1)):
        current = planted["current"].assign(as_of_date=pd.Timestamp(day))
        _write(warehouse_url, uplift.FEATURES, current[["customer_id", "as_of_date", *uplift.SCORING_COLUMNS[1:]]])
    params = {"campaign_uplift": {"min_holdout_controls": 500}}
    first = tasks.run_model(registry.model("campaign_uplift"), AS_OF, "day-1", params, warehouse_url)
    second = tasks.run_model(registry.model("campaign_uplift"), AS_OF + dt.timedelta(days=1), "day-2", params, warehouse_url)
    assert first["status"] == second["status"] == "published"
    assert first["metrics"]["refitted"] and not second["metrics"]["refitted"]
    assert first["metrics"]["holdout_qini_z"] == pytest.approx(planted["metrics"]["holdout_qini_z"], rel=1e-3)
    with connect(warehouse_url) as warehouse:
        scores = warehouse.fetch_df(f"select * from {uplift.SCORES} where as_of_date = ? order by customer_id", (AS_OF,))
    expected = planted["scores"].sort_values("customer_id", ignore_index=True)
    assert scores["customer_id"].tolist() == expected["customer_id"].tolist()
    assert np.allclose(scores["predicted_uplift"], expected["predicted_uplift"], atol=1e-9)
