"""What the tests marked `spark` share: whether a local Spark session can start on this machine."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from warehouse.spark import spark_missing


@contextmanager
def module_spark_session(folder: Path, app_name: str, untested: str) -> Iterator[Any]:
    """A test module's local Spark session with its warehouse in `folder`, stopped after the module
    unless another module started it (Spark keeps one per process); the module is skipped, naming
    what goes `untested`, where Spark cannot start."""
    reason = spark_missing()
    if reason:
        pytest.skip(f"{untested} is untested: {reason}")
    from pyspark.sql import SparkSession

    from warehouse.spark import local_spark_session

    already_running = SparkSession.getActiveSession() is not None
    session = local_spark_session(folder, app_name=app_name)
    yield session
    if not already_running:
        session.stop()
