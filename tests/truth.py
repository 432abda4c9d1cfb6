"""Reading the simulator's truth beside the warehouse: which simulated person each customer is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from warehouse import connect


def person_of_customer(url: str, truth: Path) -> pd.DataFrame:
    """customer_id -> the person behind the majority of its records (truth/identities.csv joined to
    int_customer_identity), with that person's row of truth/customers.csv; customers without a
    majority are dropped."""
    with connect(url) as warehouse:
        identity = warehouse.fetch_df("select source_table, source_key, customer_id from intermediate.int_customer_identity")
    identities = pd.read_csv(truth / "identities.csv", dtype=str)
    people = pd.read_csv(truth / "customers.csv", dtype={"person_id": str, "churn_date": str, "referred_by": str}, keep_default_na=False)
    records = identity.merge(identities, left_on=["source_table", "source_key"], right_on=["entity", "record_key"])
    votes = records.groupby(["customer_id", "person_id"]).size().rename("records").reset_index()
    totals = votes.groupby("customer_id")["records"].transform("sum")
    majority = votes[votes["records"] > totals / 2][["customer_id", "person_id"]]
    return majority.merge(people, on="person_id").set_index("customer_id")
