"""BI's view of a table on both engines: personal fields gone, the customer key salted and hashed
the same way on both (so keys join across tables and engines), the birth date as an age band; the
salt's checks. The export of a whole run is checked on its values in test_dag_end_to_end.py."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from warehouse import connect
from warehouse.bi import BiSettingsError, bi_select, bi_tables, drop_bi_views, key_salt, publish_bi_views

SALT = "0123456789abcdef-salt"


def test_bi_reads_a_table_without_its_personal_fields_with_salted_keys_and_age_bands(warehouse_url: str) -> None:
    with connect(warehouse_url) as warehouse:
        warehouse.execute("create schema published")
        warehouse.execute("create table published.people (customer_id varchar, email varchar, first_name varchar,"
                          " crm_id varchar, birth_date date, city varchar, referred_by_customer_id varchar)")
        warehouse.execute("insert into published.people values ('c1', 'ann@example.com', 'Ann', 'CRM-1', '2000-07-01', 'Lyon', null),"
                          " ('c2', null, 'Ben', 'CRM-2', '1950-01-01', 'Oslo', 'c1'), ('c3', null, null, null, null, 'Rome', null)")
        select = bi_select("published.people", warehouse.table_columns("published.people"), SALT, dt.date(2025, 6, 30))
        rows = warehouse.fetchall(f"select * from ({select}) as bi order by city")
    hashed = {key: hashlib.md5(f"{SALT}{key}".encode()).hexdigest() for key in ("c1", "c2", "c3")}
    assert rows == [
        (hashed["c1"], "under 25", "Lyon", None),
        (hashed["c2"], "65 and over", "Oslo", hashed["c1"]),
        (hashed["c3"], None, "Rome", None),
    ]
    assert "email" not in select and "first_name" not in select and "crm_id" not in select


def test_the_salt_is_required_long_enough_and_bi_table_names_are_unique() -> None:
    assert key_salt({"CRMW_BI_KEY_SALT": SALT}) == SALT
    with pytest.raises(BiSettingsError, match="CRMW_BI_KEY_SALT: not set; expected a secret of at least 16 characters"):
        key_salt({})
    with pytest.raises(BiSettingsError, match="CRMW_BI_KEY_SALT: 5 characters"):
        key_salt({"CRMW_BI_KEY_SALT": "short"})
    assert bi_tables(["fct_orders"], ["ml.churn_scores"]) == {"fct_orders": "published.fct_orders", "churn_scores": "ml.churn_scores"}
    with pytest.raises(ValueError, match="ml.fct_orders: a published mart has the name fct_orders too"):
        bi_tables(["fct_orders"], ["ml.fct_orders"])


def test_schema_bi_is_made_again_over_a_replaced_table_and_refuses_another_salt(warehouse_url: str) -> None:
    """What publish does each day, in its transaction: BI's views dropped, a published table replaced
    (its columns changed: on PostgreSQL a view would stop the drop), the views made again."""
    day = dt.date(2025, 6, 30)
    with connect(warehouse_url) as warehouse:
        warehouse.execute("create schema published")
        warehouse.execute("create table published.people (customer_id varchar, email varchar)")
        warehouse.execute("insert into published.people values ('c1', 'ann@example.com')")
        tables = {"people": "published.people", "churn_scores": "ml.churn_scores"}  # no ml.churn_scores yet
        with warehouse.transaction():
            assert publish_bi_views(warehouse, tables, SALT, day) == ["people"]
        assert warehouse.fetchall("select * from bi.people") == [(hashlib.md5(f"{SALT}c1".encode()).hexdigest(),)]
        with warehouse.transaction():
            drop_bi_views(warehouse)
            warehouse.execute("drop table published.people")
            warehouse.execute("create table published.people (customer_id varchar, email varchar, city varchar)")
            warehouse.execute("insert into published.people values ('c2', null, 'Oslo')")
            publish_bi_views(warehouse, tables, SALT, day)
        assert warehouse.fetchall("select city from bi.people") == [("Oslo",)]
        assert warehouse.fetchall("select as_of_date from bi.bi_info") == [(day,)]
        with pytest.raises(BiSettingsError, match="not the salt schema bi was made with"), warehouse.transaction():
            publish_bi_views(warehouse, tables, "another-salt-0123456789", day)
        assert warehouse.fetchall("select city from bi.people") == [("Oslo",)]
