"""The activation list from the day's model outputs: consent first (an opted-out customer is never
listed, whatever their scores), no sales contact on top of an open ticket unless configured, one
action per customer by priority, a channel that reaches them, a reason a CRM user can read."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from ml_tasks import activation
from ml_tasks.contract import BadParameter
from warehouse import connect

AS_OF = dt.date(2025, 6, 30)


def inputs(customers: list[dict]) -> dict[str, pd.DataFrame]:
    """Model outputs and contacts for customers given as dicts of overrides on a neutral customer."""
    neutral = {
        "first_name": "Ana", "last_name": "Ruiz", "email": "ana@example.com", "phone": "+34600000000",
        "is_marketing_opt_in": True, "open_tickets": 0, "favourite_channel": "web",
        "churn_probability": 0.1, "reason_1": "recency_days is high", "predicted_spend_365d": 100.0, "value_tier": "low",
        "predicted_uplift": 0.0, "conversion_if_treated": 0.05, "conversion_if_not_treated": 0.05,
        "sku": "SKU-1", "score": 0.1, "rule": None, "source": "best_seller",
    }
    rows = pd.DataFrame([{**neutral, **customer} for customer in customers])
    rows["uplift_rank"] = rows["predicted_uplift"].rank(ascending=False, method="first").astype(int)
    rows["rank"] = 1
    return {
        activation.CONTACTS: rows[list(activation.CONTACT_COLUMNS)],
        activation.CHURN: rows[list(activation.CHURN_COLUMNS)],
        activation.VALUE: rows[list(activation.VALUE_COLUMNS)],
        activation.UPLIFT: rows[list(activation.UPLIFT_COLUMNS)],
        activation.OFFERS: rows[list(activation.OFFER_COLUMNS)],
    }


def contact_list(customers: list[dict], **settings) -> tuple[pd.DataFrame, dict]:
    results, metrics = activation.run(inputs(customers), AS_OF, activation.ActivationSettings(**settings))
    return results[activation.CONTACT_LIST], metrics


AT_RISK_AND_VALUABLE = {"churn_probability": 0.8, "value_tier": "high", "predicted_spend_365d": 2500.0}
MOVED_BY_CAMPAIGNS = {"predicted_uplift": 0.15, "conversion_if_treated": 0.25, "conversion_if_not_treated": 0.10}
RULE_OFFER = {"sku": "SKU-9", "score": 0.6, "rule": "SKU-2 => SKU-9", "source": "rule"}
EVERY_REASON = {**AT_RISK_AND_VALUABLE, **MOVED_BY_CAMPAIGNS, **RULE_OFFER}


def test_an_opted_out_customer_is_never_listed_whatever_their_scores() -> None:
    customers = [{"customer_id": f"c{i}", **EVERY_REASON} for i in range(20)]
    customers += [{"customer_id": f"out{i}", **EVERY_REASON, "is_marketing_opt_in": consent} for i, consent in enumerate([False, None, False])]
    listed, metrics = contact_list(customers, campaign_top_share=1.0, cross_sell_min_confidence=0.0, retain_min_churn_probability=0.0)
    assert not listed["customer_id"].str.startswith("out").any()
    assert len(listed) == 20
    assert metrics["excluded_not_opted_in"] == 3


def test_open_tickets_keep_a_customer_off_the_list_unless_configured() -> None:
    customers = [{"customer_id": "a", **AT_RISK_AND_VALUABLE, "open_tickets": 1}, {"customer_id": "b", **AT_RISK_AND_VALUABLE}]
    listed, metrics = contact_list(customers)
    assert listed["customer_id"].tolist() == ["b"] and metrics["excluded_open_ticket"] == 1
    listed, _ = contact_list(customers, exclude_open_tickets=False)
    assert sorted(listed["customer_id"]) == ["a", "b"]


def test_one_action_per_customer_by_priority_with_channel_and_reason() -> None:
    customers = [
        {"customer_id": "both", **EVERY_REASON},  # retain wins over campaign and cross-sell
        {"customer_id": "mover", **MOVED_BY_CAMPAIGNS},
        {"customer_id": "basket", **RULE_OFFER},
        {"customer_id": "quiet"},  # nothing to say to them today
        {"customer_id": "no_phone", **AT_RISK_AND_VALUABLE, "phone": None},
        {"customer_id": "unreachable", **RULE_OFFER, "email": None, "phone": None},
    ]
    listed, metrics = contact_list(customers, campaign_top_share=0.4)
    rows = listed.set_index("customer_id")
    assert rows.loc["both", "action"] == "retain" and rows.loc["both", "channel"] == "phone"
    assert rows.loc["no_phone", "channel"] == "email"
    assert rows.loc["mover", "action"] == "campaign" and rows.loc["mover", "channel"] == "email"
    assert rows.loc["basket", "action"] == "cross_sell" and rows.loc["basket", "offer_sku"] == "SKU-9"
    assert "quiet" not in rows.index and "unreachable" not in rows.index
    assert metrics["excluded_no_channel"] == 1
    assert listed["priority"].tolist() == list(range(1, len(listed) + 1))
    assert rows.loc["both", "reason"].startswith("Retain: 80% risk of no order in 90 days")
    assert "10% -> 25%" in rows.loc["mover", "reason"]
    assert rows.loc["basket", "reason"].startswith("Cross-sell: SKU-2 => SKU-9 (60%")
    assert listed["reason"].str.contains("\n").sum() == 0


def test_each_action_is_capped_highest_priority_first_and_the_list_is_deterministic() -> None:
    customers = [{"customer_id": f"c{i:02d}", **AT_RISK_AND_VALUABLE, "predicted_spend_365d": 1000.0 + i} for i in range(30)]
    listed, _ = contact_list(customers, max_contacts_per_action=5)
    assert listed["customer_id"].tolist() == [f"c{i:02d}" for i in range(29, 24, -1)]
    shuffled = inputs(customers)
    shuffled = {name: frame.sample(frac=1, random_state=1) for name, frame in shuffled.items()}
    again = activation.run(shuffled, AS_OF, activation.ActivationSettings(max_contacts_per_action=5))[0][activation.CONTACT_LIST]
    pd.testing.assert_frame_equal(listed, again)


def test_a_campaign_is_sent_only_where_it_moves_the_customer() -> None:
    customers = [{"customer_id": "negative", "predicted_uplift": -0.02}, {"customer_id": "zero", "predicted_uplift": 0.0}]
    listed, _ = contact_list(customers, campaign_top_share=1.0)
    assert listed.empty
    assert list(listed.columns) == list(activation.CONTACT_LIST_COLUMNS)


def test_a_day_without_any_model_output_is_insufficient_data() -> None:
    from ml_tasks.contract import InsufficientData

    empty = {name: frame.iloc[0:0] for name, frame in inputs([{"customer_id": "a"}]).items()}
    empty[activation.CONTACTS] = inputs([{"customer_id": "a"}])[activation.CONTACTS]
    with pytest.raises(InsufficientData, match=f"no model output for {AS_OF}: ml.churn_scores, "):
        activation.run(empty, AS_OF, activation.ActivationSettings())


def test_missing_model_outputs_and_bad_settings_are_named() -> None:
    partial = inputs([{"customer_id": "a"}])
    del partial[activation.UPLIFT]
    with pytest.raises(ValueError, match="ml.campaign_uplift_scores"):
        activation.run(partial, AS_OF, activation.ActivationSettings())
    with pytest.raises(BadParameter, match="retain_min_value_tier: got 'top'"):
        activation.ActivationSettings(retain_min_value_tier="top")
    with pytest.raises(BadParameter, match="campaign_top_share"):
        activation.ActivationSettings(campaign_top_share=1.5)


# ---- in the warehouse, both engines ------------------------------------------------------------

CONTACT_TYPES = {
    "customer_id": "string", "as_of_date": "date", "first_name": "string", "last_name": "string", "email": "string",
    "phone": "string", "is_marketing_opt_in": "boolean", "open_tickets": "integer", "favourite_channel": "string",
}


def _write_day(url: str, customers: list[dict]) -> None:
    """The day's contacts (as dbt builds them) and model outputs (as the models publish them)."""
    import pyarrow as pa

    from ml_tasks import registry, warehouse_io

    frames = inputs(customers)
    declared = {table.name: table for table in registry.output_tables()}
    stamps = {"as_of_date": AS_OF, "run_id": "models", "model_version": "test"}
    with connect(url) as warehouse:
        contacts = frames.pop(activation.CONTACTS).assign(as_of_date=pd.Timestamp(AS_OF))
        warehouse.ensure_table(activation.CONTACTS, CONTACT_TYPES)
        warehouse.append_arrow(activation.CONTACTS, pa.Table.from_pandas(contacts[list(CONTACT_TYPES)], preserve_index=False))
        for name, frame in frames.items():
            table = declared[name]
            full = frame.reindex(columns=list(table.columns))
            warehouse.ensure_table(name, table.all_columns)
            warehouse.append_arrow(name, warehouse_io.to_arrow(table, full, stamps))


def test_the_published_list_and_its_csv_hold_only_opted_in_customers_and_only_the_activation_role_reads_it(
    warehouse_url, tmp_path, monkeypatch
):
    from ml_tasks import registry, tasks

    monkeypatch.setenv("CRMW_EXPORT_DIR", str(tmp_path / "exports"))
    customers = [{"customer_id": f"c{i}", **EVERY_REASON} for i in range(5)]
    customers += [{"customer_id": "opted_out", **EVERY_REASON, "is_marketing_opt_in": False}]
    _write_day(warehouse_url, customers)
    run = tasks.run_model(registry.model("activation_list"), AS_OF, "day-1", warehouse_url=warehouse_url)
    assert run["status"] == "published" and run["rows_out"] == 5
    with connect(warehouse_url) as warehouse:
        listed = warehouse.fetch_df("select * from activation.contact_list order by priority")
    assert sorted(listed["customer_id"]) == [f"c{i}" for i in range(5)]
    exported = pd.read_csv(tmp_path / "exports" / "activation" / f"contact_list_{AS_OF}.csv", dtype=str)
    assert exported["customer_id"].tolist() == listed["customer_id"].tolist()
    assert run["exported"] == [str(tmp_path / "exports" / "activation" / f"contact_list_{AS_OF}.csv")]
    tasks.publish(AS_OF, "day-1", warehouse_url)
    if warehouse_url.startswith("postgres"):
        with connect(warehouse_url) as warehouse:
            for role, readable, refused in (
                ("crmw_activation_reader", "activation.contact_list_latest", "ml.churn_scores"),
                ("crmw_bi_reader", "bi.churn_scores_latest", "activation.contact_list"),
            ):
                with warehouse.transaction():
                    warehouse.execute(f"set local role {role}")
                    warehouse.fetchall(f"select count(*) from {readable}")
                with pytest.raises(Exception, match="permission denied"), warehouse.transaction():
                    warehouse.execute(f"set local role {role}")
                    warehouse.fetchall(f"select count(*) from {refused}")


def test_retention_takes_the_most_value_at_risk_first_from_the_tiers_the_setting_allows() -> None:
    customers = [
        {"customer_id": "big_spender_slightly_at_risk", "churn_probability": 0.35, "value_tier": "high", "predicted_spend_365d": 3000.0},
        {"customer_id": "medium_and_likely_to_go", "churn_probability": 0.9, "value_tier": "medium", "predicted_spend_365d": 800.0},
        {"customer_id": "low_value", "churn_probability": 0.9, "value_tier": "low", "predicted_spend_365d": 50.0},
        {"customer_id": "staying", "churn_probability": 0.1, "value_tier": "high", "predicted_spend_365d": 5000.0},
    ]
    listed, _ = contact_list(customers)
    assert listed["customer_id"].tolist() == ["big_spender_slightly_at_risk", "medium_and_likely_to_go"]  # 1,050 then 720 at risk
    listed, _ = contact_list(customers, retain_min_value_tier="high")
    assert listed["customer_id"].tolist() == ["big_spender_slightly_at_risk"]
