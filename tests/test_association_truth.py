"""Association rules against the rules the simulator planted: mined through the registered model
from a warehouse dbt built over 13 months, every planted rule is found, with its confidence and lift
within 3 binomial standard errors of the planted values."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from ml_tasks.tasks import run_model
from tests.conftest import TRUTH_LAST_DAY
from warehouse import connect


@pytest.fixture(scope="module")
def mined(truth_warehouse, tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    url, sources = truth_warehouse
    copy = tmp_path_factory.mktemp("association-truth") / "warehouse.duckdb"
    shutil.copyfile(url[len("duckdb:///"):], copy)
    run = run_model("association_rules", TRUTH_LAST_DAY, "truth", warehouse_url=f"duckdb:///{copy}")
    with connect(f"duckdb:///{copy}") as warehouse:
        rules = warehouse.fetch_df("select * from ml.association_rules where item_level = 'product'")
        offers = warehouse.fetch_df("select * from ml.product_recommendations")
    return rules, offers, {"run": run, "planted": pd.read_csv(Path(sources) / "truth" / "rules.csv")}


def test_the_run_publishes_rules_and_offers(mined):
    rules, offers, context = mined
    assert context["run"]["status"] == "published", context["run"].get("message")
    assert len(rules) and len(offers)


def test_every_planted_rule_is_found_with_confidence_and_lift_within_three_standard_errors(mined):
    rules, _, context = mined
    found = rules.set_index(["antecedent", "consequent"])
    for planted in context["planted"].itertuples():
        key = (planted.antecedent, planted.consequent)
        assert key in found.index, f"planted rule {key} (support {planted.support}) not found"
        rule = found.loc[key]
        baskets, with_antecedent = float(rule["baskets"]), float(rule["antecedent_baskets"])
        confidence_error = math.sqrt(planted.confidence * (1 - planted.confidence) / with_antecedent)
        consequent_error = math.sqrt(planted.consequent_support * (1 - planted.consequent_support) / baskets)
        # Delta method: lift = confidence / consequent support.
        lift_error = planted.lift * math.hypot(confidence_error / planted.confidence, consequent_error / planted.consequent_support)
        assert abs(rule["confidence"] - planted.confidence) <= 3 * confidence_error, (key, rule["confidence"], planted.confidence)
        assert abs(rule["lift"] - planted.lift) <= 3 * lift_error, (key, rule["lift"], planted.lift)
        support_error = math.sqrt(planted.support * (1 - planted.support) / baskets)
        assert abs(rule["support"] - planted.support) <= 3 * support_error, (key, rule["support"], planted.support)
