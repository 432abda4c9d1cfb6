"""RFM scoring and segmentation on hand-made customers, and publishing segments to the warehouse."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pyarrow as pa
import pytest

from ml_tasks import warehouse_io
from ml_tasks.tasks import run_segmentation
from ml_tasks.segmentation import MODEL_NAME, MODEL_VERSION, score_rfm, segment_customers
from warehouse import connect

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


# -- publishing -------------------------------------------------------------------------------------

SEGMENTS = "ml.customer_segments"


def _publish(warehouse_url: str, features: pd.DataFrame, as_of: dt.date, run_id: str) -> dict:
    results, metrics = segment_customers(features, as_of, run_id)
    written = warehouse_io.publish_results(
        SEGMENTS,
        results,
        model_name=MODEL_NAME,
        model_version=MODEL_VERSION,
        as_of_date=as_of,
        run_id=run_id,
        metrics=metrics,
        warehouse_url=warehouse_url,
    )
    assert written == len(results)
    return metrics


def test_publishing_twice_for_a_date_leaves_one_copy_and_one_model_run(warehouse_url):
    _publish(warehouse_url, _features(), AS_OF, "first")
    changed = {**{key: values[:3] for key, values in CUSTOMERS.items()}, "zoe": (7, 8, 900.0)}
    metrics = _publish(warehouse_url, _features(changed), AS_OF, "second")
    with connect(warehouse_url) as warehouse:
        rows = warehouse.fetchall(f"select customer_id, run_id from {SEGMENTS} order by customer_id")
        runs = warehouse.fetchall(
            "select model_name, model_version, as_of_date, run_id, metrics from ml.model_runs"
        )
    assert rows == [(key, "second") for key in sorted(changed)]
    assert [run[:4] for run in runs] == [(MODEL_NAME, MODEL_VERSION, AS_OF, "second")]
    assert json.loads(runs[0][4]) == metrics


def test_publishing_a_new_date_keeps_earlier_dates(warehouse_url):
    next_day = AS_OF + dt.timedelta(days=1)
    _publish(warehouse_url, _features(), AS_OF, "day-1")
    _publish(warehouse_url, _features(), next_day, "day-2")
    _publish(warehouse_url, _features(), next_day, "day-2-retry")
    with connect(warehouse_url) as warehouse:
        per_day = warehouse.fetchall(
            f"select as_of_date, run_id, count(*) from {SEGMENTS} group by 1, 2 order by 1"
        )
        runs = warehouse.fetchall("select as_of_date, run_id from ml.model_runs order by 1")
        frame = warehouse.fetch_df(f"select * from {SEGMENTS} where as_of_date = ? order by customer_id", (AS_OF,))
    assert per_day == [(AS_OF, "day-1", len(CUSTOMERS)), (next_day, "day-2-retry", len(CUSTOMERS))]
    assert runs == [(AS_OF, "day-1"), (next_day, "day-2-retry")]
    expected, _ = segment_customers(_features(), AS_OF, "day-1")
    assert list(frame["rfm_segment"]) == list(expected.sort_values("customer_id")["rfm_segment"])
    assert list(frame["r_score"]) == list(expected.sort_values("customer_id")["r_score"])
    assert (frame["as_of_date"] == pd.Timestamp(AS_OF)).all()


def test_publishing_a_day_without_customers_then_a_day_with_customers(warehouse_url):
    _publish(warehouse_url, _empty_features(), AS_OF, "empty-day")
    _publish(warehouse_url, _features(), AS_OF + dt.timedelta(days=1), "full-day")
    with connect(warehouse_url) as warehouse:
        segments = warehouse.fetchall(f"select rfm_segment, count(*) from {SEGMENTS} group by 1 order by 1")
        runs = warehouse.fetchall("select as_of_date, metrics from ml.model_runs order by 1")
        types = warehouse.fetchall(
            "select column_name, lower(data_type) from information_schema.columns"
            " where table_schema = 'ml' and table_name = 'customer_segments' and column_name in ('r_score', 'rfm_segment')"
            " order by 1"
        )
    # The empty first day decided the table's columns: they must be the ones a full day has.
    assert types[0] == ("r_score", "bigint")
    assert types[1][0] == "rfm_segment" and types[1][1] in ("varchar", "text")
    assert dict(segments) == {"champions": 2, "hibernating": 2, "loyal": 2, "new_customers": 1, "promising": 3}
    assert json.loads(runs[0][1]) == {"customers_scored": 0, "segment_share": {}}
    assert len(runs) == 2


def test_run_segmentation_reads_features_and_publishes_segments(warehouse_url):
    features = _features().assign(as_of_date=pd.Timestamp(AS_OF))
    with connect(warehouse_url) as warehouse:
        warehouse.ensure_table(
            "features.customer_rfm",
            {"customer_id": "string", "as_of_date": "date", "recency_days": "integer", "frequency": "integer", "monetary": "decimal"},
        )
        warehouse.append_arrow("features.customer_rfm", pa.Table.from_pandas(features.assign(as_of_date=AS_OF), preserve_index=False))
    metrics = run_segmentation(AS_OF, "dag-run", warehouse_url)
    assert metrics["customers_scored"] == len(CUSTOMERS)
    with connect(warehouse_url) as warehouse:
        published = dict(warehouse.fetchall(f"select customer_id, rfm_segment from {SEGMENTS}"))
    assert published == {customer: values[6] for customer, values in CUSTOMERS.items()}
    with pytest.raises(ValueError, match="expected 2025-02-01"):
        run_segmentation(AS_OF + dt.timedelta(days=1), "dag-run", warehouse_url)
