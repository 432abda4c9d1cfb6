"""Comment topics (ml_tasks.comment_topics) on small hand-made comments: three kinds of comment
are found as three topics, outputs have their declared columns, the same tickets in another order
give the same outputs, too few comments raise InsufficientData, and settings are checked."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from ml_tasks import comment_topics
from ml_tasks.contract import PANDAS_DTYPES, BadParameter, InsufficientData

AS_OF = dt.date(2025, 6, 30)
KINDS = {
    "slow": (["slow", "late", "waited"], ["reply", "answer", "response"], 1),
    "broken": (["broken", "faulty", "damaged"], ["item", "product", "parcel"], 3),
    "praise": (["great", "lovely", "excellent"], ["service", "help", "support"], 5),
}


def synthetic_tickets(count: int = 360, seed: int = 1) -> tuple[pd.DataFrame, pd.Series]:
    """`count` tickets over the six months to AS_OF, a comment on each but one in six (blank or
    null), of one of KINDS (adjective + noun + filler); and each ticket's kind."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(KINDS), count)
    texts, ratings = [], []
    for kind in kinds:
        adjectives, nouns, rating = KINDS[kind]
        texts.append(f"{rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(['hi', 'regards', 'ok', ''])}")
        ratings.append(rating)
    comments = pd.Series(texts, dtype="object")
    comments[::6] = None
    comments[3::12] = "   "
    frame = pd.DataFrame({
        "ticket_id": [f"T{number:04d}" for number in range(count)],
        "created_date": pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(0, 180, count), unit="D"),
        "satisfaction_rating": pd.array(ratings, dtype="Int64"),
        "satisfaction_comment": comments,
    })
    return frame, pd.Series(kinds, index=frame["ticket_id"])


SETTINGS = comment_topics.CommentTopicSettings(topic_count=3, minimum_comments=100, min_term_comments=2)


def test_three_kinds_of_comment_are_found_as_three_topics_with_their_words_and_ratings():
    tickets, kinds = synthetic_tickets()
    results, metrics = comment_topics.run({comment_topics.TICKETS: tickets}, AS_OF, SETTINGS)
    topics = results[comment_topics.TOPICS]
    comments = comment_topics.window_comments(tickets, AS_OF, SETTINGS.window_days)
    assigned, _, _ = comment_topics.assign_topics(comments, SETTINGS)
    per_kind = pd.crosstab(kinds[assigned["ticket_id"]].to_numpy(), assigned["topic_id"].to_numpy())
    assert (per_kind.max(axis=1) == per_kind.sum(axis=1)).all()  # every kind wholly in one topic
    assert per_kind.idxmax(axis=1).nunique() == 3
    for kind, (adjectives, nouns, rating) in KINDS.items():
        topic = topics[topics["topic_id"] == per_kind.idxmax(axis=1)[kind]].iloc[0]
        assert set(topic["top_terms"].split(", ")[:3]) <= set(adjectives + nouns)
        assert topic["mean_rating"] == rating
        assert topic["label"].count(" / ") == 2
    assert list(topics["comments"]) == sorted(topics["comments"], reverse=True)
    assert topics["comments"].sum() == metrics["comments"] == len(comments) == 360 - 60 - 30  # null, blank
    assert topics["share"].sum() == pytest.approx(1.0)


def test_outputs_have_exactly_their_declared_columns_and_dtypes_and_monthly_shares_sum_to_one():
    tickets, _ = synthetic_tickets()
    results, metrics = comment_topics.run({comment_topics.TICKETS: tickets}, AS_OF, SETTINGS)
    for table, columns in ((comment_topics.TOPICS, comment_topics.TOPIC_COLUMNS), (comment_topics.TRENDS, comment_topics.TREND_COLUMNS)):
        frame = results[table]
        assert list(frame.columns) == list(columns)
        assert {column: str(frame[column].dtype) for column in columns} == {column: PANDAS_DTYPES[kind] for column, kind in columns.items()}
    trends = results[comment_topics.TRENDS]
    assert len(trends) == metrics["months"] * 3
    assert trends.groupby("month")["share"].sum().round(5).eq(1.0).all()
    assert trends.groupby("month")["comments"].sum().sum() == metrics["comments"]
    assert trends["month"].dt.day.eq(1).all()


def test_validation_beats_topics_of_shuffled_words_on_the_held_out_days():
    tickets, _ = synthetic_tickets()
    _, metrics = comment_topics.run({comment_topics.TICKETS: tickets}, AS_OF, SETTINGS)
    assert metrics["holdout_comments"] > 0 and metrics["training_comments"] > metrics["holdout_comments"]
    for metric, floor in comment_topics.QUALITY_FLOORS.items():
        assert metrics[metric] >= floor, metrics


def test_the_same_tickets_in_another_order_give_the_same_outputs():
    tickets, _ = synthetic_tickets()
    first, first_metrics = comment_topics.run({comment_topics.TICKETS: tickets}, AS_OF, SETTINGS)
    shuffled = tickets.sample(frac=1.0, random_state=7).reset_index(drop=True)
    second, second_metrics = comment_topics.run({comment_topics.TICKETS: shuffled}, AS_OF, SETTINGS)
    for table in first:
        pd.testing.assert_frame_equal(first[table], second[table])
    assert first_metrics == second_metrics


def test_too_few_comments_in_the_window_raise_insufficient_data_naming_the_counts():
    tickets, _ = synthetic_tickets()
    with pytest.raises(InsufficientData, match=r"marts.fct_tickets: \d+ comments .* expected at least 1000"):
        comment_topics.run({comment_topics.TICKETS: tickets}, AS_OF, comment_topics.CommentTopicSettings(minimum_comments=1000))
    # Tickets created before the window or after the as-of date do not count.
    with pytest.raises(InsufficientData):
        comment_topics.run({comment_topics.TICKETS: tickets}, AS_OF + dt.timedelta(days=400), SETTINGS)


def test_the_window_and_topic_count_settings_shape_the_outputs():
    tickets, _ = synthetic_tickets()
    results, metrics = comment_topics.run({comment_topics.TICKETS: tickets}, AS_OF,
                                          comment_topics.CommentTopicSettings(topic_count=4, minimum_comments=50, window_days=90, holdout_days=30))
    assert len(results[comment_topics.TOPICS]) == 4
    assert results[comment_topics.TRENDS]["month"].min() >= pd.Timestamp(AS_OF - dt.timedelta(days=120))
    assert metrics["comments"] < 200


@pytest.mark.parametrize("change, fragment", [
    ({"topic_count": 1}, "topic_count: got 1"),
    ({"window_days": 10}, "window_days: got 10"),
    ({"holdout_days": 400}, "holdout_days: got 400"),
    ({"min_term_comments": 0}, "min_term_comments: got 0"),
    ({"topic_count": 2.5}, "topic_count: got 2.5, expected int"),
])
def test_a_bad_setting_raises_bad_parameter_naming_it(change, fragment):
    with pytest.raises(BadParameter, match=fragment):
        comment_topics.CommentTopicSettings(**change)


def test_a_missing_column_or_a_ticket_twice_is_named():
    tickets, _ = synthetic_tickets()
    with pytest.raises(ValueError, match="missing column 'satisfaction_comment'"):
        comment_topics.run({comment_topics.TICKETS: tickets.drop(columns="satisfaction_comment")}, AS_OF, SETTINGS)
    with pytest.raises(ValueError, match="ticket 'T0001' appears more than once"):
        comment_topics.run({comment_topics.TICKETS: pd.concat([tickets, tickets.iloc[[1]]])}, AS_OF, SETTINGS)
