"""Churn propensity (ml_tasks/churn.py) on synthetic training snapshots with a planted churn rule:
the fit/score contract (columns, types, determinism), validation in time, too little history,
readable reasons naming the customer's values, drift, and settings validation."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ml_tasks import churn
from ml_tasks.churn import FEATURES, REASONS, SCORE_COLUMNS, SCORES, TRAINING, ChurnSettings, fit, score
from ml_tasks.contract import PANDAS_DTYPES, BadParameter, InsufficientData

SNAPSHOTS = [dt.date(2024, month, 28) for month in range(1, 6)]
TODAY = dt.date(2024, 9, 1)
CUSTOMERS = 800


def _customers(as_of: dt.date, count: int, seed: int, recency_shift: int = 0) -> pd.DataFrame:
    """Feature rows shaped as customer_features, with an `is_churned` label drawn from a planted
    rule: churn grows with recency, unresolved tickets and poor ratings, falls with frequency."""
    rng = np.random.default_rng(seed)
    frequency = 1 + rng.poisson(4, count)
    bought = rng.random(count) > 0.02  # the rest have orders, all cancelled or returned
    recency = np.where(bought, np.minimum(rng.exponential(70, count).round() + recency_shift, 700), np.nan)
    frequency = np.where(bought, frequency, 0)
    returned = rng.binomial(frequency, 0.05)
    cancelled = rng.binomial(frequency + 1, 0.03) + (~bought)
    order_count = frequency + returned + cancelled
    order_value = rng.lognormal(4, 0.5, count)
    recent_orders = np.where(recency < 90, 1 + rng.poisson(1, count), 0)
    channel = rng.choice(["web", "store", "phone"], count)
    tickets = rng.poisson(1.0, count)
    open_tickets = rng.binomial(tickets, 0.3)
    unresolved = rng.binomial(open_tickets, 0.6)
    rated = rng.binomial(tickets, 0.7)
    satisfaction = np.where(rated > 0, rng.uniform(1, 5, count).round(1), np.nan)
    interactions = rng.poisson(2, count)
    campaigns = rng.poisson(2, count)
    conversions = rng.binomial(campaigns, 0.2)
    opt_in = pd.array(rng.random(count) < 0.6, dtype="boolean")
    opt_in[rng.random(count) < 0.1] = pd.NA
    shares = {name: np.where(channel == name, 0.7, 0.15) for name in ("web", "store", "phone")}
    frame = pd.DataFrame({
        "customer_id": [f"c{number:05d}" for number in range(count)],
        "as_of_date": pd.Timestamp(as_of),
        "tenure_days": (np.nan_to_num(recency, nan=30) + rng.uniform(0, 400, count)).round().astype(int),
        "is_crm_contact": rng.random(count) < 0.9,
        "order_count": order_count,
        "frequency": frequency,
        "monetary": (frequency * order_value).round(2),
        "average_order_value": np.where(bought, order_value, np.nan),
        "recency_days": pd.array(recency, dtype="Int32"),
        "frequency_last_30_days": np.minimum(recent_orders, np.where(recency < 30, 1, 0)),
        "frequency_last_90_days": recent_orders,
        "monetary_last_90_days": (recent_orders * order_value).round(2),
        "returned_orders": returned,
        "cancelled_orders": cancelled,
        "return_rate": returned / order_count,
        "favourite_channel": pd.array(np.where(bought, channel, None), dtype="str"),
        "favourite_category_share": np.where(bought, rng.uniform(0.3, 1, count), np.nan),
        "distinct_categories": np.where(bought, rng.integers(1, 6, count), 0),
        "discount_share": np.where(bought, rng.uniform(0, 0.3, count), np.nan),
        "items_per_order": np.where(bought, rng.lognormal(1, 0.3, count), np.nan),
        **{f"{name}_share": np.where(bought, share, np.nan) for name, share in shares.items()},
        "marketing_opt_in": opt_in,
        "tickets_opened": tickets,
        "tickets_opened_last_90_days": rng.binomial(tickets, 0.4),
        "open_tickets": open_tickets,
        "unresolved_tickets": unresolved,
        "slow_reply_tickets": rng.binomial(tickets, 0.2),
        "rated_tickets": rated,
        "average_satisfaction": satisfaction,
        "dissatisfied_tickets": np.where(satisfaction <= 2, 1, 0),
        "days_since_last_ticket": pd.array(np.where(tickets > 0, rng.integers(0, 300, count), np.nan), dtype="Int32"),
        "interactions": interactions,
        "interactions_last_90_days": rng.binomial(interactions, 0.3),
        "complaint_interactions": rng.binomial(interactions, 0.1),
        "campaigns_received": campaigns,
        "campaign_conversions": conversions,
        "campaign_response_rate": np.where(campaigns > 0, conversions / np.maximum(campaigns, 1), np.nan),
    })
    logit = (-2.0 + 0.025 * np.nan_to_num(recency, nan=300) + 0.9 * unresolved
             + 0.4 * (3 - np.nan_to_num(satisfaction, nan=3)) - 0.15 * frequency)
    frame["is_churned"] = rng.random(count) < 1 / (1 + np.exp(-logit))
    return frame


def _training(snapshots=SNAPSHOTS, seed: int = 0) -> pd.DataFrame:
    return pd.concat([_customers(day, CUSTOMERS, seed + index) for index, day in enumerate(snapshots)], ignore_index=True)


def _today(seed: int = 99, recency_shift: int = 0) -> pd.DataFrame:
    frame = _customers(TODAY, CUSTOMERS, seed, recency_shift).drop(columns="is_churned")
    # Known customers who never ordered (CRM contacts) are not scored.
    frame.loc[:19, ["order_count", "frequency", "cancelled_orders"]] = 0
    # One long-lapsed customer, one with three tickets left unresolved.
    frame.loc[20, "recency_days"] = 650
    frame.loc[21, ["tickets_opened", "open_tickets", "unresolved_tickets", "recency_days"]] = [3, 3, 3, 20]
    return frame


@pytest.fixture(scope="module")
def fitted_and_scored():
    fitted, metrics = fit({TRAINING: _training()}, TODAY, ChurnSettings())
    results, score_metrics = score(fitted, {FEATURES: _today()}, TODAY, ChurnSettings())
    return fitted, metrics, results[SCORES], score_metrics


def test_scores_have_the_declared_columns_and_types_for_every_customer_with_an_order(fitted_and_scored) -> None:
    fitted, metrics, scores, score_metrics = fitted_and_scored
    today = _today()
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert {column: str(dtype) for column, dtype in scores.dtypes.items()} == {
        column: PANDAS_DTYPES[kind] for column, kind in SCORE_COLUMNS.items()}
    assert list(scores["customer_id"]) == sorted(today.loc[today["order_count"] > 0, "customer_id"])
    assert scores["churn_probability"].between(0, 1).all()
    assert set(scores["risk_band"]) <= set(churn.RISK_BANDS)
    high = scores["churn_probability"] >= ChurnSettings().high_risk_probability
    assert (scores.loc[high, "risk_band"] == "high").all() and (scores.loc[~high, "risk_band"] != "high").all()
    assert score_metrics["customers_scored"] == len(scores)
    json.dumps(metrics), json.dumps(score_metrics)
    assert pickle.loads(pickle.dumps(fitted)).model.name == metrics["chosen_model"]


def test_fit_validates_in_time_and_reports_chosen_and_baseline_on_the_last_snapshot(fitted_and_scored) -> None:
    _, metrics, _, _ = fitted_and_scored
    assert metrics["snapshots"] == 5
    assert metrics["train_window"] == "2024-01-28..2024-03-28"
    assert (metrics["selection_window"], metrics["test_window"]) == ("2024-04-28", "2024-05-28")
    assert (metrics["train_rows"], metrics["selection_rows"], metrics["test_rows"]) == (3 * CUSTOMERS, CUSTOMERS, CUSTOMERS)
    assert set(metrics["candidates_selection_pr_auc"]) == set(churn.CANDIDATES)
    assert metrics["chosen_model"] == max(metrics["candidates_selection_pr_auc"], key=metrics["candidates_selection_pr_auc"].get)
    assert metrics["calibration_method"] in churn.CALIBRATION_METHODS
    # The planted rule is learnable: well above a coin, and calibrated better than the base rate.
    assert metrics["test_roc_auc"] > 0.8 and metrics["baseline_test_roc_auc"] > 0.8
    assert metrics["test_brier"] < metrics["test_base_rate_brier"]
    assert metrics["test_brier_skill"] == pytest.approx(1 - metrics["test_brier"] / metrics["test_base_rate_brier"], abs=1e-5)
    assert metrics["test_top_decile_lift"] > 1.5
    assert abs(metrics["test_mean_probability"] - metrics["test_churn_rate"]) < 0.05
    for floor_metric in churn.QUALITY_FLOORS:
        assert metrics[floor_metric] >= churn.QUALITY_FLOORS[floor_metric]
    assert metrics["published_fit_rows"] == 4 * CUSTOMERS and metrics["published_calibration_rows"] == CUSTOMERS


def test_same_rows_in_another_order_give_the_same_model_and_scores(fitted_and_scored) -> None:
    _, metrics, scores, _ = fitted_and_scored
    training = _training().sample(frac=1, random_state=7)
    today = _today().sample(frac=1, random_state=8)
    fitted_again, metrics_again = fit({TRAINING: training}, TODAY, ChurnSettings())
    results, _ = score(fitted_again, {FEATURES: today}, TODAY, ChurnSettings())
    assert metrics_again == metrics
    pd.testing.assert_frame_equal(results[SCORES], scores)


def test_fewer_than_three_labelled_snapshots_is_insufficient_data() -> None:
    with pytest.raises(InsufficientData, match=r"2 labelled snapshots \(2024-01-28, 2024-02-28\).*at least 3"):
        fit({TRAINING: _training(SNAPSHOTS[:2])}, TODAY, ChurnSettings())
    # Snapshots after the as-of date are not used: a rerun for an earlier day sees its own history.
    with pytest.raises(InsufficientData, match="2 labelled snapshots"):
        fit({TRAINING: _training()}, dt.date(2024, 3, 1), ChurnSettings())


def test_a_window_with_too_few_churners_is_insufficient_data() -> None:
    training = _training()
    last = training["as_of_date"] == pd.Timestamp(SNAPSHOTS[-1])
    training.loc[last, "is_churned"] = False
    training.loc[training.index[last][:3], "is_churned"] = True
    with pytest.raises(InsufficientData, match=r"test window has 3 churners and 797 non-churners.*min_window_churners = 30"):
        fit({TRAINING: training}, TODAY, ChurnSettings())


def test_reasons_are_readable_phrases_naming_the_customers_values(fitted_and_scored) -> None:
    _, _, scores, _ = fitted_and_scored
    by_customer = scores.set_index("customer_id")
    assert by_customer.loc["c00020", "reason_1"] == "no order in 650 days"
    reasons_21 = set(by_customer.loc["c00021", ["reason_1", "reason_2", "reason_3"]].dropna())
    assert "3 unresolved tickets" in reasons_21
    for rank in (1, 2, 3):
        named = scores[f"reason_{rank}"].notna()
        # A reason comes with its contribution, at least the minimum worth naming; none without.
        assert (named == scores[f"contribution_{rank}"].notna()).all()
        assert (scores.loc[named, f"contribution_{rank}"] >= ChurnSettings().reason_min_contribution - 1e-6).all()
        assert scores.loc[named, f"reason_{rank}"].str.len().gt(5).all()
    # Ranked: the first reason raises the probability most.
    both = scores["reason_2"].notna()
    assert (scores.loc[both, "contribution_1"] >= scores.loc[both, "contribution_2"]).all()
    assert scores["reason_1"].notna().mean() > 0.5
    # Recency is the planted driver: the commonest first reason.
    assert scores["reason_1"].str.startswith(("no order in", "last order")).mean() > 0.3


@pytest.mark.parametrize(("group", "values", "typical", "expected"), [
    ("recency", {"recency_days": 74.0}, {"recency_days": 30.0}, "no order in 74 days"),
    ("recency", {"recency_days": float("nan")}, {"recency_days": 30.0}, "no completed order"),
    ("frequency", {"frequency": 1.0, "order_count": 1.0}, {"frequency": 5.0}, "only 1 order"),
    ("frequency", {"frequency": 0.0, "order_count": 2.0}, {"frequency": 5.0}, "none of 2 orders completed"),
    ("recent_spend", {"frequency_last_30_days": 0.0, "frequency_last_90_days": 0.0, "monetary_last_90_days": 0.0},
     {"monetary_last_90_days": 120.0}, "spend down: €0 in the last 90 days (0 orders)"),
    ("returns", {"returned_orders": 2.0, "return_rate": 0.4}, {}, "returned 40% of orders (2)"),
    ("open_tickets", {"open_tickets": 2.0, "unresolved_tickets": 2.0}, {}, "2 unresolved tickets"),
    ("open_tickets", {"open_tickets": 1.0, "unresolved_tickets": 0.0}, {}, "1 open ticket"),
    ("slow_replies", {"slow_reply_tickets": 3.0}, {}, "3 slow first replies"),
    ("satisfaction", {"average_satisfaction": 1.5, "dissatisfied_tickets": 0.0, "rated_tickets": 2.0}, {}, "average rating 1.5 stars"),
    ("campaigns", {"campaigns_received": 4.0, "campaign_conversions": 0.0, "campaign_response_rate": 0.0}, {},
     "no campaign response (4 received)"),
    ("channel", {"web_share": 0.1, "store_share": 0.1, "phone_share": 0.8}, {}, "buys mostly by phone (80% of orders)"),
    ("marketing", {"marketing_opt_in": 0.0, "is_crm_contact": 1.0}, {}, "not opted in to marketing"),
])
def test_each_reason_phrase_states_the_value(group, values, typical, expected) -> None:
    assert REASONS[group][1](values, typical) == expected


@pytest.mark.parametrize("value", [float("nan"), 0.0, 1.0])
def test_every_reason_phrase_reads_nulls_zeros_and_ones(value) -> None:
    for group, (columns, phrase) in REASONS.items():
        typical = {column: 1.0 for column in churn.MATRIX_COLUMNS}
        text = phrase({column: value for column in columns}, typical)
        assert isinstance(text, str) and len(text) > 5 and "nan" not in text, (group, text)


def test_every_feature_column_belongs_to_exactly_one_reason_group() -> None:
    grouped = [column for columns, _ in REASONS.values() for column in columns]
    assert sorted(grouped) == sorted(churn.MATRIX_COLUMNS)
    assert set(churn.TRAINING_COLUMNS) == {"customer_id", "as_of_date", "is_churned", *churn.FEATURE_COLUMNS}


def test_drift_psi_compares_the_score_and_top_features_with_training(fitted_and_scored) -> None:
    fitted, metrics, _, score_metrics = fitted_and_scored
    assert set(score_metrics["drift_psi"]) == {"churn_probability", *metrics["top_features"]}
    assert len(metrics["top_features"]) == churn.DRIFT_FEATURES and "recency_days" in metrics["top_features"]
    assert score_metrics["drift_psi"]["recency_days"] < 0.1  # today drawn like the training snapshots
    _, shifted = score(fitted, {FEATURES: _today(recency_shift=120)}, TODAY, ChurnSettings())
    assert shifted["drift_psi"]["recency_days"] > 0.2 and shifted["drift_psi"]["churn_probability"] > 0.2


@pytest.mark.parametrize(("field", "value"), [
    ("training_max_rows", 10), ("forest_trees", 0), ("boosting_learning_rate", "fast"), ("random_state", -1),
    ("n_jobs", True), ("score_chunk_rows", 10), ("high_risk_probability", 1.5), ("medium_risk_probability", 0.6),
])
def test_settings_out_of_range_raise_bad_parameter_naming_the_field(field, value) -> None:
    with pytest.raises(BadParameter, match=rf"^{field}: got"):
        ChurnSettings(**{field: value})


def test_importing_the_module_imports_no_pandas_or_scikit_learn() -> None:
    code = "import sys, ml_tasks.churn; print(sorted({'pandas', 'sklearn', 'numpy', 'scipy'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
