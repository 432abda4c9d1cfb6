"""Recency, frequency, monetary value and favourite category have one definition
(dbt_project/macros/customer_rfm.sql): customer_360 and the features show the same numbers."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TRUTH_LAST_DAY
from warehouse.adapter import connect

MEASURES = "frequency, monetary, recency_days, favourite_category"


def test_customer_360_rfm_and_favourite_category_equal_the_features_on_a_daily_run(truth_warehouse: tuple[str, Path]) -> None:
    """The shared warehouse is built as the DAG's daily run for its last day, a day with orders."""
    url, _ = truth_warehouse
    with connect(url) as warehouse:
        mart = {customer: measures for customer, *measures in
                warehouse.fetchall(f"select customer_id, {MEASURES} from marts.customer_360")}
        features = {customer: measures for customer, *measures in
                    warehouse.fetchall(f"select customer_id, {MEASURES} from features.customer_features")}
        ((reference_date,),) = warehouse.fetchall("select distinct reference_date from marts.customer_360")
    assert reference_date == TRUTH_LAST_DAY
    differing = {customer: (mart.get(customer), measures) for customer, measures in features.items()
                 if mart.get(customer) != measures}
    assert not differing, f"customer_360 and customer_features differ (customer: (mart, features)): {dict(list(differing.items())[:10])}"
    # A customer the features do not know on the date (no contact, order or ticket by then) bought nothing.
    assert all(measures[0] == 0 for customer, measures in mart.items() if customer not in features)
    buyers = [measures for measures in features.values() if measures[0] > 0]
    assert len(buyers) > 1000 and all(recency is not None and category is not None for _, _, recency, category in buyers)
