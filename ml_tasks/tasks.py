"""Entry points the DAG calls: one function per task, each reading, computing, publishing."""

from __future__ import annotations

import datetime as dt
import os

from ml_tasks import segmentation, warehouse_io

CUSTOMER_SEGMENTS = "ml.customer_segments"
RFM_FEATURES = "features.customer_rfm"
PUBLISHED_TABLES = [CUSTOMER_SEGMENTS]
BI_SCHEMAS = ["marts", "features", "ml"]


def run_segmentation(as_of_date: dt.date, run_id: str, warehouse_url: str | None = None) -> dict:
    features = warehouse_io.read_features(RFM_FEATURES, warehouse_url)
    as_of = features[features["as_of_date"] == features["as_of_date"].max()] if not features.empty else features
    if not as_of.empty and as_of["as_of_date"].iloc[0].date() != as_of_date:
        raise ValueError(
            f"{RFM_FEATURES} holds features as of {as_of['as_of_date'].iloc[0].date()}, expected {as_of_date}:"
            " run the dbt step for this date first"
        )
    results, metrics = segmentation.segment_customers(as_of, as_of_date, run_id)
    warehouse_io.publish_results(
        CUSTOMER_SEGMENTS,
        results,
        model_name=segmentation.MODEL_NAME,
        model_version=segmentation.MODEL_VERSION,
        as_of_date=as_of_date,
        run_id=run_id,
        metrics=metrics,
        warehouse_url=warehouse_url,
    )
    return metrics


def publish(warehouse_url: str | None = None) -> None:
    bi_role = os.environ.get("CRMW_BI_ROLE", "crmw_bi_reader")
    warehouse_io.publish_latest_views(PUBLISHED_TABLES, bi_role, BI_SCHEMAS, warehouse_url)
