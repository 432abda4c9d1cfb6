"""Satisfaction drivers on small synthetic tickets: planted effects recovered with intervals that
cover them, sentences, the window and prior-ticket counting, determinism, too little data, settings."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ml_tasks import satisfaction
from ml_tasks.contract import BadParameter, InsufficientData
from ml_tasks.satisfaction import DRIVER_COLUMNS, DRIVERS, TICKETS, SatisfactionSettings, run

AS_OF = dt.date(2025, 6, 30)
# Planted: a breached first reply -2 stars, category 'billing' -0.6 (against 'delivery', the most
# common), channel 'phone' +0.4 (against 'email'); nothing else moves the rating.
BASE_RATING = 4.0
FIRST_REPLY_EFFECT = -2.0
BILLING_EFFECT = -0.6
PHONE_EFFECT = 0.4


def synthetic_tickets(count: int = 2_000, seed: int = 1) -> pd.DataFrame:
    """`count` tickets opened over the 300 days to AS_OF by 400 customers, solved 1-3 days later
    (the last days' solves fall after AS_OF), rated from the planted effects plus noise."""
    rng = np.random.default_rng(seed)
    created = pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(0, 300 * 24, count), unit="h")
    solved = created + pd.to_timedelta(rng.integers(1, 4, count), unit="D")
    breached = rng.random(count) < 0.2
    category = rng.choice(["delivery", "billing", "returns"], count, p=[0.5, 0.3, 0.2])
    channel = rng.choice(["email", "phone", "chat"], count, p=[0.5, 0.3, 0.2])
    expected = (BASE_RATING + FIRST_REPLY_EFFECT * breached + BILLING_EFFECT * (category == "billing")
                + PHONE_EFFECT * (channel == "phone"))
    rating = np.clip(np.rint(expected + rng.normal(0, 0.6, count)), 1, 5).astype("int64")
    return pd.DataFrame({
        "ticket_id": np.arange(1, count + 1),
        "customer_id": [f"c{number:03d}" for number in rng.integers(0, 400, count)],
        "channel": channel,
        "category": category,
        "priority": rng.choice(["low", "normal", "high"], count, p=[0.3, 0.5, 0.2]),
        "created_at": created,
        "created_date": created.normalize(),
        "solved_date": solved.normalize(),
        "is_sla_breached": breached,
        "is_resolution_sla_breached": rng.random(count) < 0.4,
        "is_reopened": rng.random(count) < 0.1,
        "satisfaction_rating": pd.array(rating, dtype="Int64"),
    })


def _drivers(tickets: pd.DataFrame, settings: SatisfactionSettings | None = None) -> tuple[pd.DataFrame, dict]:
    results, metrics = run({TICKETS: tickets}, AS_OF, settings or SatisfactionSettings())
    return results[DRIVERS], metrics


def _effect(drivers: pd.DataFrame, driver: str, level: str) -> pd.Series:
    return drivers[(drivers["driver"] == driver) & (drivers["level"] == level)].iloc[0]


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, dict]:
    return _drivers(synthetic_tickets())


def test_planted_effects_are_recovered_within_their_intervals_and_ranked_by_size(planted):
    drivers, _ = planted
    for driver, level, reference, effect in (("first_reply_sla_breached", "true", "false", FIRST_REPLY_EFFECT),
                                             ("category", "billing", "delivery", BILLING_EFFECT),
                                             ("channel", "phone", "email", PHONE_EFFECT)):
        row = _effect(drivers, driver, level)
        assert row["reference_level"] == reference
        assert row["ci_low"] <= effect <= row["ci_high"], (driver, row["effect_stars"], row["ci_low"], row["ci_high"])
        assert abs(row["effect_stars"] - effect) < 0.1
        assert row["is_significant"]
    assert list(drivers["driver"][:3]) == ["first_reply_sla_breached", "category", "channel"]
    assert list(drivers["effect_rank"]) == list(range(1, len(drivers) + 1))
    unplanted = drivers[~drivers["driver"].isin(["first_reply_sla_breached"])
                        & ~((drivers["driver"] == "category") & (drivers["level"] == "billing"))
                        & ~((drivers["driver"] == "channel") & (drivers["level"] == "phone"))]
    assert unplanted["effect_stars"].abs().max() < 0.15


def test_output_has_the_declared_columns_and_one_row_per_level_against_its_reference(planted):
    drivers, _ = planted
    assert list(drivers.columns) == list(DRIVER_COLUMNS)
    levels = set(zip(drivers["driver"], drivers["level"], drivers["reference_level"]))
    assert ("priority", "low", "normal") in levels and ("priority", "high", "normal") in levels
    assert ("prior_tickets", "1", "0") in levels and ("prior_tickets", "2+", "0") in levels
    assert not any(level == reference for _, level, reference in levels)
    breached = _effect(drivers, "first_reply_sla_breached", "true")
    assert 0.15 < breached["share_of_tickets"] < 0.25
    assert breached["mean_rating"] < 2.5


def test_time_validation_beats_the_mean_rating_baseline(planted):
    _, metrics = planted
    assert metrics["validation_mae"] < metrics["baseline_mae"]
    assert metrics["validation_rmse"] < metrics["baseline_rmse"]
    assert metrics["validation_mae_skill"] > 0.3
    assert metrics["training_tickets"] + metrics["validation_tickets"] == metrics["rated_tickets"]
    assert metrics["validation_tickets"] == round(0.2 * metrics["rated_tickets"])


def test_sentences_state_the_effect_interval_and_share():
    row = {"driver": "first_reply_sla_breached", "level": "true", "reference_level": "false", "effect_stars": -2.43,
           "ci_low": -2.52, "ci_high": -2.34, "is_significant": True, "share_of_tickets": 0.151}
    assert satisfaction.sentence(row, 0.95) == (
        "A breached first reply lowers ratings by 2.4 stars (95% CI 2.3 to 2.5), 15% of rated tickets.")
    row = {"driver": "prior_tickets", "level": "1", "reference_level": "0", "effect_stars": 0.031,
           "ci_low": -0.004, "ci_high": 0.066, "is_significant": False, "share_of_tickets": 0.28}
    assert satisfaction.sentence(row, 0.9) == (
        "A customer with 1 earlier ticket (against none) raises ratings by 0.03 stars (90% CI 0.00 to 0.07),"
        " 28% of rated tickets; not significant.")


def test_same_tickets_in_another_order_give_the_same_drivers(planted):
    drivers, metrics = planted
    shuffled = synthetic_tickets().sample(frac=1.0, random_state=7)
    again, metrics_again = _drivers(shuffled)
    pd.testing.assert_frame_equal(drivers, again)
    assert metrics == metrics_again


def test_only_rated_tickets_of_the_window_known_by_the_as_of_date_are_modelled():
    tickets = synthetic_tickets()
    late = tickets.copy()
    # Tickets opened after the as-of date, or before the window, add nothing to the model.
    late["created_at"] = late["created_at"] + pd.Timedelta(days=400)
    late["created_date"] = late["created_date"] + pd.Timedelta(days=400)
    late["ticket_id"] = late["ticket_id"] + 10_000
    old = tickets.copy()
    old["created_at"] = old["created_at"] - pd.Timedelta(days=400)
    old["created_date"] = old["created_date"] - pd.Timedelta(days=400)
    old["ticket_id"] = old["ticket_id"] + 20_000
    settings = SatisfactionSettings(window_days=301, history_window_days=730)
    _, metrics = _drivers(pd.concat([tickets, late, old]), settings)
    solved_by_then = (tickets["solved_date"] <= pd.Timestamp(AS_OF)).sum()
    assert metrics["rated_tickets"] == solved_by_then < len(tickets)
    assert metrics["tickets_read"] == 2 * len(tickets)


def test_prior_tickets_count_the_customers_earlier_tickets_before_the_window():
    tickets = pd.DataFrame({
        "ticket_id": [1, 2, 3, 4, 5],
        "customer_id": ["a", "a", "a", "b", "a"],
        "channel": "email", "category": "billing", "priority": "normal",
        "created_at": pd.to_datetime(["2025-01-05", "2025-06-01", "2025-06-10", "2025-06-10", "2025-06-10"]),
        "solved_date": pd.to_datetime(["2025-01-06", "2025-06-02", "2025-06-11", "2025-06-11", "2025-06-11"]),
        "is_sla_breached": False, "is_resolution_sla_breached": False, "is_reopened": False,
        "satisfaction_rating": 4,
    })
    tickets["created_date"] = tickets["created_at"].dt.normalize()
    rated, _ = satisfaction.rated_tickets(tickets, AS_OF, SatisfactionSettings(window_days=100, history_window_days=365))
    # Ticket 1 is before the window but counts for its customer; 3 and 5 opened at the same instant.
    assert dict(zip(rated["ticket_id"], rated["prior_tickets"])) == {2: 1, 3: 2, 4: 0, 5: 2}


def test_rare_levels_are_pooled_and_rare_flags_get_no_effect():
    tickets = synthetic_tickets()
    tickets.loc[tickets.index[:12], "category"] = "warranty"
    tickets["is_reopened"] = tickets["ticket_id"] <= 5
    drivers, metrics = _drivers(tickets, SatisfactionSettings(min_level_tickets=30))
    assert "warranty" not in set(drivers["level"]) and "other" in set(drivers.loc[drivers["driver"] == "category", "level"])
    assert "reopened" not in set(drivers["driver"])
    assert any(skip.startswith("reopened=true") for skip in metrics["levels_without_effect"])


def test_too_few_rated_tickets_is_insufficient_data():
    tickets = synthetic_tickets(count=150)
    with pytest.raises(InsufficientData, match=r"marts.fct_tickets: \d+ rated tickets .* expected at least 250"):
        _drivers(tickets)
    drivers, _ = _drivers(tickets, SatisfactionSettings(min_rated_tickets=100, min_level_tickets=5))
    assert len(drivers) > 0


def test_a_missing_input_column_is_named():
    with pytest.raises(ValueError, match="marts.fct_tickets: missing column 'is_resolution_sla_breached'"):
        _drivers(synthetic_tickets(count=300).drop(columns="is_resolution_sla_breached"))


@pytest.mark.parametrize("field, value, expected", [
    ("window_days", 0, "at least 1"),
    ("history_window_days", 100, "at least 365"),
    ("holdout_share", 0.9, "between 0.05 and 0.5"),
    ("confidence_level", 1.0, "between 0.5 and 0.999"),
    ("min_level_tickets", 1.5, "expected int"),
])
def test_settings_out_of_range_are_named(field, value, expected):
    with pytest.raises(BadParameter, match=f"{field}: got .*{expected}"):
        SatisfactionSettings(**{field: value})


def test_a_wider_confidence_level_widens_the_intervals(planted):
    drivers, _ = planted
    wide, _ = _drivers(synthetic_tickets(), SatisfactionSettings(confidence_level=0.99))
    merged = drivers.merge(wide, on=["driver", "level"], suffixes=("", "_99"))
    assert (merged["effect_stars"] == merged["effect_stars_99"]).all()
    assert ((merged["ci_high_99"] - merged["ci_low_99"]) > (merged["ci_high"] - merged["ci_low"])).all()
    assert wide["sentence"].str.contains("99% CI").all()
