"""RFM scoring and segmentation on hand-made customers, and publishing segments to the warehouse."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from ml_tasks.segmentation import MODEL_NAME, MODEL_VERSION, score_rfm, segment_customers

# customer: recency_days, frequency, monetary, and the scores and segment worked out by hand
# (quintiles of 10 customers: ranks 1-2 score 1, ..., ranks 9-10 score 5; low recency is good).
CUSTOMERS = {
    "alice": (1, 50, 9000.0, 5, 5, 5, "champions"),
    "bob": (2, 1, 20.0, 5, 1, 1, "new_customers"),
    "carol": (400, 40, 5000.0, 1, 5, 5, "loyal"),
    "dave": (300, 2, 15.0, 1, 1, 1, "hibernating"),
    "erin": (5, 3, 60.0, 4, 2, 2, "promising"),
    "frank": (250, 30, 3000.0, 2, 4, 4, "loyal"),
    "grace": (10, 20, 1500.0, 4, 4, 4, "champions"),
    "heidi": (100, 4, 80.0, 2, 2, 2, "hibernating"),
    "ivan": (60, 10, 700.0, 3, 3, 3, "promising"),
    "judy": (30, 5, 100.0, 3, 3, 3, "promising"),
}
AS_OF = dt.date(2025, 1, 31)


def _features(customers: dict = CUSTOMERS) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": list(customers),
            "recency_days": [values[0] for values in customers.values()],
            "frequency": [values[1] for values in customers.values()],
            "monetary": [values[2] for values in customers.values()],
        }
    )


def _empty_features() -> pd.DataFrame:
    return _features().iloc[0:0]


def test_score_rfm_scores_hand_made_customers_as_worked_out_by_hand():
    scored = score_rfm(_features()).set_index("customer_id")
    for customer, (*_, r, f, m, segment) in CUSTOMERS.items():
        assert (scored.loc[customer, "r_score"], scored.loc[customer, "f_score"], scored.loc[customer, "m_score"]) == (r, f, m), customer
        assert scored.loc[customer, "rfm_segment"] == segment, customer


def test_score_rfm_scores_are_whole_numbers_from_1_to_5():
    scored = score_rfm(_features())
    for column in ("r_score", "f_score", "m_score"):
        assert str(scored[column].dtype) == "int64"
        assert set(scored[column]) == {1, 2, 3, 4, 5}


def test_most_recent_most_frequent_biggest_spender_is_a_555_champion():
    scored = score_rfm(_features()).set_index("customer_id")
    best = scored.loc["alice"]
    assert (best["r_score"], best["f_score"], best["m_score"], best["rfm_segment"]) == (5, 5, 5, "champions")


def test_score_rfm_keeps_the_input_columns_and_one_row_per_customer():
    features = _features().assign(as_of_date=pd.Timestamp(AS_OF))
    scored = score_rfm(features)
    assert sorted(scored["customer_id"]) == sorted(CUSTOMERS)
    assert list(scored.columns) == [*features.columns, "r_score", "f_score", "m_score", "rfm_segment"]


def test_score_rfm_does_not_depend_on_input_row_order_even_with_ties():
    tied = {
        **CUSTOMERS,
        "ken": (30, 5, 100.0),  # the same as judy
        "liz": (30, 5, 100.0),
        "mo": (1, 50, 9000.0),  # the same as alice
    }
    features = _features({key: values[:3] for key, values in tied.items()})
    expected = score_rfm(features)
    for seed in range(5):
        shuffled = features.sample(frac=1, random_state=seed).reset_index(drop=True)
        pd.testing.assert_frame_equal(score_rfm(shuffled), expected)
    assert list(expected["customer_id"]) == sorted(tied)


def test_score_rfm_does_not_change_its_input():
    features = _features()
    before = features.copy()
    score_rfm(features)
    pd.testing.assert_frame_equal(features, before)


@pytest.mark.parametrize("column", ["customer_id", "recency_days", "frequency", "monetary"])
def test_score_rfm_missing_column_raises_value_error_naming_it(column):
    with pytest.raises(ValueError, match=rf"RFM features: missing column\(s\) {column}$"):
        score_rfm(_features().drop(columns=[column]))


def test_score_rfm_of_no_customers_gives_no_rows_with_the_usual_columns_and_dtypes():
    empty = score_rfm(_empty_features())
    full = score_rfm(_features())
    assert len(empty) == 0
    assert list(empty.columns) == list(full.columns)
    assert {c: str(t) for c, t in empty.dtypes.items()} == {c: str(t) for c, t in full.dtypes.items()}


def test_segment_customers_stamps_date_run_and_model_version_on_every_row():
    result, _ = segment_customers(_features(), AS_OF, "manual__2025-01-31")
    assert len(result) == len(CUSTOMERS)
    assert (result["as_of_date"] == pd.Timestamp(AS_OF)).all()
    assert (result["run_id"] == "manual__2025-01-31").all()
    assert (result["model_version"] == MODEL_VERSION).all()
    by_key = result.set_index("customer_id")
    for customer, (recency, frequency, monetary, r, f, m, segment) in CUSTOMERS.items():
        row = by_key.loc[customer]
        assert (row["recency_days"], row["frequency"], row["monetary"]) == (recency, frequency, monetary)
        assert (row["r_score"], row["f_score"], row["m_score"], row["rfm_segment"]) == (r, f, m, segment)


def test_segment_customers_metrics_count_customers_and_shares_sum_to_one():
    _, metrics = segment_customers(_features(), AS_OF, "run-1")
    assert metrics["customers_scored"] == len(CUSTOMERS)
    assert metrics["segment_share"] == {
        "champions": 0.2,
        "hibernating": 0.2,
        "loyal": 0.2,
        "new_customers": 0.1,
        "promising": 0.3,
    }
    assert sum(metrics["segment_share"].values()) == pytest.approx(1.0, abs=1e-9)
    json.dumps(metrics)  # stored as JSON in ml.model_runs


def test_segment_customers_shares_sum_to_one_when_they_do_not_divide_evenly():
    three = {key: CUSTOMERS[key][:3] for key in ("alice", "bob", "carol")}
    _, metrics = segment_customers(_features(three), AS_OF, "run-1")
    assert sum(metrics["segment_share"].values()) == pytest.approx(1.0, abs=1e-5)


def test_segment_customers_of_no_customers_gives_no_rows_and_no_shares():
    result, metrics = segment_customers(_empty_features(), AS_OF, "run-1")
    full, _ = segment_customers(_features(), AS_OF, "run-1")
    assert len(result) == 0
    assert metrics == {"customers_scored": 0, "segment_share": {}}
    assert {c: str(t) for c, t in result.dtypes.items()} == {c: str(t) for c, t in full.dtypes.items()}
