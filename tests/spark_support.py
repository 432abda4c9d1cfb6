"""What the tests marked `spark` share: whether a local Spark session can start on this machine."""

from __future__ import annotations

import importlib.util
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest


def spark_missing() -> str | None:
    """Why a local Spark session cannot start here (pyspark or a Java runtime missing), or None."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (it is pinned in requirements.txt: make install)"
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and (Path(java_home) / "bin" / "java").exists()) and shutil.which("java") is None:
        return ("Spark needs Java 17: found neither $JAVA_HOME/bin/java nor java on the PATH"
                " (Debian: apt-get install openjdk-17-jre-headless)")
    return None


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
