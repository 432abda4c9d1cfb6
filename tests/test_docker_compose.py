"""docker-compose.yml and docker/Dockerfile describe a stack that can start: checked by reading them,
since the test machines have no Docker engine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

DATABASES = ("warehouse-db", "airflow-metadata-db")
# Airflow 3 components and the CLI command each one runs; the init service runs a script instead.
AIRFLOW_COMMANDS = {
    "airflow-api-server": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
AIRFLOW_SERVICES = ("airflow-init", *AIRFLOW_COMMANDS)
# The services of the compose profile that puts Airflow's tasks on Celery workers.
CELERY_PROFILE = {"redis", "airflow-worker"}
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"
# The one bind mount whose host folder is not part of the repository: the source-system exports.
# Host folders a service may mount (a variable in the header) -> the variable naming the folder inside.
HOST_FOLDERS = {"CRMW_HOST_SOURCE_DIR": "CRMW_SOURCE_DIR", "CRMW_HOST_EXPORT_DIR": "CRMW_EXPORT_DIR"}

INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SHORT_MOUNT = re.compile(r"^(\$\{[^}]*\}[^:]*|[^:]+):([^:]+)(?::(ro|rw))?$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _services(compose: dict) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    return {key: str(value) for key, value in service.get("environment", {}).items()}


def _mounts(service: dict) -> list[tuple[str, str]]:
    """(host or volume name, container path) of each short-syntax volume entry."""
    mounts = []
    for entry in service.get("volumes", []):
        match = SHORT_MOUNT.match(entry)
        assert match, f"volume entry {entry!r} is not host:container[:ro|rw]"
        mounts.append((match.group(1), match.group(2)))
    return mounts


def _is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~", "${"))


def _host_path_of(service: dict, container_path: str) -> Path:
    """The repository path a container path comes from, through the service's bind mounts."""
    target = PurePosixPath(container_path)
    candidates = [
        (PurePosixPath(inside), source)
        for source, inside in _mounts(service)
        if _is_bind(source) and not source.startswith("${") and target.is_relative_to(inside)
    ]
    assert candidates, f"{container_path} is not inside any bind mount of the repository"
    inside, source = max(candidates, key=lambda candidate: len(candidate[0].parts))
    return (ROOT / source / target.relative_to(inside)).resolve()


def _url_with_defaults(value: str) -> str:
    """A URL with each ${VAR:-default} replaced by its default and ${VAR:?...} by the lowercase name."""

    def fill(match: re.Match) -> str:
        name, operator, rest = match.groups()
        return rest if operator in (":-", "-") else name.lower()

    return INTERPOLATION.sub(fill, value)


def _init_script(compose: dict) -> str:
    command = _services(compose)["airflow-init"]["command"]
    assert command[:2] == ["bash", "-c"], "airflow-init runs one bash script"
    return command[2]


def test_stack_has_both_databases_and_every_airflow3_component(compose):
    assert set(DATABASES) | set(AIRFLOW_SERVICES) <= set(_services(compose))


def test_airflow_services_build_the_project_dockerfile_and_run_their_airflow3_command(compose):
    services = _services(compose)
    for name in AIRFLOW_SERVICES:
        build = services[name]["build"]
        assert (ROOT / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert services[name]["user"].endswith(":0"), f"{name}: the official image runs with group 0"
    for name, command in AIRFLOW_COMMANDS.items():
        assert services[name]["command"] == command


def test_init_runs_once_and_the_airflow_components_wait_for_it_to_succeed(compose):
    services = _services(compose)
    assert services["airflow-init"].get("restart", "no") == "no"
    for name in AIRFLOW_COMMANDS:
        depends_on = services[name]["depends_on"]
        assert depends_on["airflow-init"] == {"condition": "service_completed_successfully"}, name
        for database in DATABASES:
            assert depends_on[database] == {"condition": "service_healthy"}, name
        assert services[name]["restart"] == "always", name
    for database in DATABASES:
        assert services["airflow-init"]["depends_on"][database] == {"condition": "service_healthy"}


def test_init_migrates_airflow_creates_the_writer_pool_and_parses_the_dbt_project(compose):
    script = _init_script(compose)
    assert script.startswith("set -euo pipefail"), "a failed step must fail the init service"
    assert "airflow db migrate" in script
    # $$ leaves the variable to the container's shell, which has the service environment.
    assert 'airflow pools set warehouse_writer "$${CRMW_WAREHOUSE_POOL_SLOTS}" "one writer per warehouse"' in script
    project = re.search(r"^cd (\S+)$", script, re.MULTILINE).group(1)
    assert _host_path_of(_services(compose)["airflow-init"], project) == ROOT / "dbt_project"
    assert "dbt parse --profiles-dir . --project-dir ." in script
    assert script.index("airflow db migrate") < script.index("airflow pools set")


def test_postgres_services_are_health_checked_and_keep_their_data_in_declared_volumes(compose):
    services = _services(compose)
    for name in DATABASES:
        service = services[name]
        assert service["image"] in ("postgres:15", "postgres:16"), name
        assert "pg_isready" in " ".join(service["healthcheck"]["test"]), name
        volumes = [source for source, inside in _mounts(service) if inside == "/var/lib/postgresql/data"]
        assert len(volumes) == 1 and not _is_bind(volumes[0]), f"{name}: data in a named volume"
        assert volumes[0] in compose["volumes"], f"{name}: volume {volumes[0]} declared at top level"
    assert services["warehouse-db"]["ports"], "BI tools reach the warehouse from the host"


def test_airflow_components_are_health_checked_on_their_airflow3_endpoints(compose):
    services = _services(compose)
    api_check = services["airflow-api-server"]["healthcheck"]["test"]
    assert api_check[-1] == "http://localhost:8080/api/v2/version"
    assert any(port.endswith(":8080") for port in services["airflow-api-server"]["ports"])
    assert services["airflow-scheduler"]["healthcheck"]["test"][-1] == "http://localhost:8974/health"
    assert _env(services["airflow-scheduler"])["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    for name, job in (("airflow-dag-processor", "DagProcessorJob"), ("airflow-triggerer", "TriggererJob")):
        assert f"airflow jobs check --job-type {job}" in services[name]["healthcheck"]["test"][-1]


def test_airflow_environment_names_local_executor_metadata_db_warehouse_and_execution_api(compose):
    services = _services(compose)
    metadata_env = _env(services["airflow-metadata-db"])
    warehouse_env = _env(services["warehouse-db"])
    for name in AIRFLOW_SERVICES:
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false", name

        metadata = urlsplit(_url_with_defaults(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
        assert metadata.scheme.startswith("postgresql"), name
        assert (metadata.hostname, metadata.username, metadata.path) == (
            "airflow-metadata-db",
            metadata_env["POSTGRES_USER"],
            "/" + metadata_env["POSTGRES_DB"],
        ), name

        for key, scheme in (("WAREHOUSE_URL", "postgresql"), ("AIRFLOW_CONN_WAREHOUSE", "postgres")):
            warehouse = urlsplit(_url_with_defaults(env[key]))
            assert warehouse.scheme == scheme, f"{name}: {key}"
            assert (warehouse.hostname, warehouse.username, warehouse.path) == (
                "warehouse-db",
                _url_with_defaults(warehouse_env["POSTGRES_USER"]),
                "/" + _url_with_defaults(warehouse_env["POSTGRES_DB"]),
            ), f"{name}: {key}"
            assert warehouse.password == _url_with_defaults(warehouse_env["POSTGRES_PASSWORD"]), f"{name}: {key}"
        assert metadata.password == _url_with_defaults(metadata_env["POSTGRES_PASSWORD"]), name

        execution_api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert (execution_api.hostname, execution_api.port, execution_api.path) == (
            "airflow-api-server",
            8080,
            "/execution/",
        ), name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], f"{name}: one JWT secret shared by all components"


def _header() -> str:
    return COMPOSE_FILE.read_text().split("\n---", 1)[0]


def _profiles(service: dict) -> set[str]:
    return set(service.get("profiles", []))


def test_celery_profile_holds_a_redis_broker_and_a_worker_and_is_off_by_default(compose):
    services = _services(compose)
    assert {name for name, service in services.items() if "celery" in _profiles(service)} == CELERY_PROFILE
    for name in CELERY_PROFILE:
        assert _profiles(services[name]) == {"celery"}, name
    header = _header()
    assert re.search(r"^#\s+AIRFLOW_EXECUTOR=CeleryExecutor$", header, re.MULTILINE), "how to switch, in .env"
    assert re.search(r"^#\s+COMPOSE_PROFILES=celery\b", header, re.MULTILINE), "the profile, in .env"
    assert re.search(r"^#\s+AIRFLOW_EXECUTOR \(LocalExecutor\)", header, re.MULTILINE), "the switch is documented"


def test_redis_is_health_checked_with_a_ping(compose):
    redis = _services(compose)["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-\w+)?", redis["image"]), redis["image"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["restart"] == "always"
    assert "ports" not in redis, "the broker is for the stack's own services, not the host"


def test_worker_runs_a_celery_worker_health_checked_by_pinging_itself_and_stops_warm(compose):
    worker = _services(compose)["airflow-worker"]
    assert worker["command"] == "celery worker"
    kind, check = worker["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    # $$ leaves HOSTNAME to the container's shell: each worker of a scaled service pings itself.
    assert check == f'celery --app {CELERY_APP} inspect ping -d "celery@$${{HOSTNAME}}"'
    assert _env(worker)["DUMB_INIT_SETSID"] == "0"
    assert worker["restart"] == "always"


def test_worker_shares_the_common_airflow_image_environment_and_mounts(compose):
    services = _services(compose)
    worker, scheduler = services["airflow-worker"], services["airflow-scheduler"]
    worker_env = _env(worker)
    del worker_env["DUMB_INIT_SETSID"]
    assert worker_env == _env(scheduler)
    for key in ("build", "user", "volumes"):
        assert worker[key] == scheduler[key], key


def test_worker_waits_for_redis_both_databases_init_and_the_api_server(compose):
    depends_on = _services(compose)["airflow-worker"]["depends_on"]
    assert depends_on == {
        "redis": {"condition": "service_healthy"},
        **{database: {"condition": "service_healthy"} for database in DATABASES},
        "airflow-init": {"condition": "service_completed_successfully"},
        "airflow-api-server": {"condition": "service_healthy"},
    }


def test_scheduler_waits_for_redis_only_when_the_celery_profile_is_on(compose):
    assert _services(compose)["airflow-scheduler"]["depends_on"]["redis"] == {"condition": "service_healthy", "required": False}


def test_services_outside_a_profile_never_require_a_service_of_one(compose):
    """Compose refuses to start a stack in which a started service requires one a profile leaves out."""
    services = _services(compose)
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            if _profiles(services[dependency]) - _profiles(service):
                assert condition.get("required") is False, f"{name} requires {dependency} of another profile"


def test_celery_broker_is_the_redis_service_and_results_go_to_the_metadata_database(compose):
    services = _services(compose)
    metadata_env = _env(services["airflow-metadata-db"])
    for name in AIRFLOW_SERVICES:
        env = _env(services[name])
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379), name
        results = urlsplit(_url_with_defaults(env["AIRFLOW__CELERY__RESULT_BACKEND"]))
        metadata = urlsplit(_url_with_defaults(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
        assert results.scheme == "db+postgresql", name
        assert (results.hostname, results.port, results.username, results.password, results.path) == (
            metadata.hostname,
            metadata.port,
            metadata_env["POSTGRES_USER"],
            _url_with_defaults(metadata_env["POSTGRES_PASSWORD"]),
            "/" + metadata_env["POSTGRES_DB"],
        ), name


def test_dags_folder_is_the_repository_dags_directory_mounted_in_every_airflow_service(compose):
    for name in AIRFLOW_SERVICES:
        service = _services(compose)[name]
        dags_folder = _env(service)["AIRFLOW__CORE__DAGS_FOLDER"]
        assert _host_path_of(service, dags_folder) == ROOT / "dags", name
        assert (ROOT / "dags").is_dir()


def test_bind_mounts_come_from_the_repository_or_the_documented_host_folders(compose):
    header = COMPOSE_FILE.read_text().split("\n---", 1)[0]
    for name, service in _services(compose).items():
        for source, inside in _mounts(service):
            if not _is_bind(source):
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
            elif source.startswith("${"):
                variable = INTERPOLATION.fullmatch(source).group(1)
                assert variable in HOST_FOLDERS, f"{name}: {source}"
                assert variable in header, f"the host folder variable {variable} is documented"
                env = _env(service)
                assert env[HOST_FOLDERS[variable]] == inside, f"{name}: {HOST_FOLDERS[variable]} is the mounted folder"
            else:
                assert (ROOT / source).exists(), f"{name}: {source} is not in the repository"


def test_secrets_are_interpolated_from_the_environment_never_written_in_the_file(compose):
    text = COMPOSE_FILE.read_text()
    header = text.split("\n---", 1)[0]
    for name, service in _services(compose).items():
        for key, value in _env(service).items():
            if re.search(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY)$", key):
                assert INTERPOLATION.fullmatch(value), f"{name}: {key} holds a literal value"
            if "://" in value:
                password = urlsplit(INTERPOLATION.sub("INTERPOLATED", value)).password
                assert password in (None, "INTERPOLATED"), f"{name}: {key} has a literal password"
    for match in INTERPOLATION.finditer(text):
        variable, operator, message = match.groups()
        if operator == ":?":
            assert variable in header, f"required variable {variable} is documented in the header"
            # Compose would read a hyphen in the message as a default value.
            assert "-" not in message, match.group(0)


def test_dockerfile_builds_on_the_official_image_of_the_pinned_airflow_and_python():
    dockerfile = DOCKERFILE.read_text()
    base = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert len(base) == 1
    image = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", base[0])
    assert image, base[0]
    pinned = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert image.group(1) == pinned.group(1)
    requires_python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={image.group(2)}," in requires_python

    assert re.search(r"^RUN pip install .*-r requirements\.txt", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install .*--no-deps -e \.$", dockerfile, re.MULTILINE)


def test_image_copies_every_package_the_project_ships():
    dockerfile = DOCKERFILE.read_text()
    copied = set()
    for line in re.findall(r"^COPY\s+(.+)$", dockerfile, re.MULTILINE):
        sources = [part for part in line.split()[:-1] if not part.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
        copied.update(source.rstrip("/") for source in sources)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied
    assert {"pyproject.toml", "README.md", "requirements.txt"} <= copied
