"""A local Apache Spark session for this project: tests, benchmarks and the dbt `spark` target's
session method on one machine.

pyspark is imported inside the function, so the modules that import this one start no JVM and
load no Spark until a session is asked for. Everything the session writes stays under the folder it is given: the
warehouse directory, the Derby metastore (which Hive support otherwise creates as `metastore_db/`
and `derby.log` in the working directory) and the logging configuration.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Two cores are what this project's machines (and CI) have; shuffle partitions default to 200,
# which on demo-sized data is 200 near-empty tasks per shuffle: one per core instead.
LOCAL_CORES = 2
SHUFFLE_PARTITIONS = LOCAL_CORES

# More options for the session's JVM (Spark's driver), as Java takes them, e.g.
# "-XX:TieredStopAtLevel=1": the suite's thousands of small statements spent a third of their CPU
# compiling Spark's code with Java's optimising compiler, which pays off on large data only.
JAVA_OPTIONS_SETTING = "CRMW_SPARK_JAVA_OPTIONS"
# The JVM's heap (spark.driver.memory: "4g", "512m"), Spark's own default (1g) where unset. Only a
# session that starts the process's JVM takes it: Java fixes its heap at start.
DRIVER_MEMORY_SETTING = "CRMW_SPARK_DRIVER_MEMORY"
_MEMORY_SIZE = re.compile(r"[1-9][0-9]*[kmgt]?", re.IGNORECASE)

# Spark's default logging prints every WARN of its start (native Hadoop, loopback address) to
# stderr; errors alone are worth a line in a test or task log. pyspark's gateway, an "interpreter" to
# Spark, announces "Setting default log level" at each start unless its logger has the root's level.
_LOG4J2_PROPERTIES = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = error
"""


def spark_missing() -> str | None:
    """Why a local Spark session cannot start here (pyspark or a Java runtime missing), or None."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (it is pinned in requirements.txt: make install)"
    java_home = os.environ.get("JAVA_HOME")
    if not (java_home and (Path(java_home) / "bin" / "java").exists()) and shutil.which("java") is None:
        return ("Spark needs Java 17: found neither $JAVA_HOME/bin/java nor java on the PATH"
                " (Debian: apt-get install openjdk-17-jre-headless)")
    return None


def local_spark_session(folder: Path, app_name: str = "crm-warehouse") -> SparkSession:
    """A SparkSession on local[2] with Hive support, its warehouse directory, Derby metastore and
    logging configuration under `folder` (created if missing), the web UI off.

    Spark runs one session's JVM per process: when one is already running here, it is returned as
    it is (its folder may differ; a warning says so) and stopping it is its creator's business.
    """
    driver_memory = os.environ.get(DRIVER_MEMORY_SETTING, "").strip()
    if driver_memory and not _MEMORY_SIZE.fullmatch(driver_memory):
        raise ValueError(f"{DRIVER_MEMORY_SETTING}={driver_memory!r}: expected the JVM's heap as Spark takes it,"
                         " a whole number with an optional k, m, g or t (e.g. 4g)")
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:
        raise RuntimeError("local_spark_session needs pyspark, which is not installed: "
                           "pip install pyspark (and a Java 17 runtime)") from error

    folder = Path(folder).resolve()
    warehouse_dir = folder / "spark-warehouse"
    metastore = folder / "metastore_db"
    log4j = folder / "log4j2.properties"

    running = SparkSession.getActiveSession()
    if running is not None:
        used = running.conf.get("spark.sql.warehouse.dir", None) or ""
        if Path(used.removeprefix("file:")) != warehouse_dir:
            log.warning("a Spark session is already running in this process (warehouse %s): returning it, not one under %s",
                        used, folder)
        return running

    folder.mkdir(parents=True, exist_ok=True)
    log4j.write_text(_LOG4J2_PROPERTIES, encoding="utf-8")

    # Python workers (UDFs, RDD maps) run this interpreter, the one with the project's packages, unless
    # told otherwise: pyspark takes their interpreter from PYSPARK_PYTHON alone (its setting
    # spark.pyspark.python is not read on a session started from Python), else `python3` on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Quoted: Spark splits these options at spaces outside quotes, and a folder may hold a space.
    java_options = (f'"-Dderby.system.home={folder}" "-Dlog4j.configurationFile={log4j.as_uri()}"'
                    f' {os.environ.get(JAVA_OPTIONS_SETTING, "")}')
    builder = (
        SparkSession.builder.master(f"local[{LOCAL_CORES}]")
        .appName(app_name)
        .config("spark.sql.shuffle.partitions", str(SHUFFLE_PARTITIONS))
        .config("spark.default.parallelism", str(LOCAL_CORES))
        .config("spark.sql.warehouse.dir", str(warehouse_dir))
        .config("spark.hadoop.javax.jdo.option.ConnectionURL", f"jdbc:derby:;databaseName={metastore};create=true")
        .config("spark.driver.extraJavaOptions", java_options)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        # pandas frames cross into Spark as Arrow batches, not row by row through Python.
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .enableHiveSupport()
    )
    if driver_memory:
        builder = builder.config("spark.driver.memory", driver_memory)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def end_local_spark() -> None:
    """Stop this process's Spark session and end its JVM, as the process's end would. Derby lets go of
    a folder's metastore only when its JVM ends (a stopped session keeps it locked), so a process that
    hands its folder to another (`crmw run` after the bench) or opens another folder ends it first;
    the next session starts a JVM of its own. pyspark offers no call for this: it reaches into the
    gateway pyspark keeps on SparkContext."""
    if "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return
    gateway.shutdown()
    # The JVM exits when its standard input closes (pyspark's gateway watches it for the driver's end).
    gateway.proc.stdin.close()
    gateway.proc.wait(timeout=120)
    SparkContext._gateway = SparkContext._jvm = None


__all__ = ["DRIVER_MEMORY_SETTING", "JAVA_OPTIONS_SETTING", "LOCAL_CORES", "SHUFFLE_PARTITIONS", "end_local_spark", "local_spark_session", "spark_missing"]
