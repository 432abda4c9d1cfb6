"""crm_daily and its run report in a browser, used as a person would: `crmw airflow` serves the UI,
headless Chromium (Debian's `chromium`, driven by playwright) logs in with the banner's password,
opens crm_daily's grid and graph, triggers a run from the form for a day the sources cover, and
sees every task turn green; then the report that run wrote opens with no console error, each of its
charts drawn, and its tables sorting on a click.

One run on DuckDB (400 customers over six months, the end-to-end tests' sources) serves both
tests. Each test keeps its screenshots in its own folder (pytest's tmp_path) and prints their paths.
The tests skip, saying why, where playwright or a Chromium is missing; `.ci/run` installs Debian's
`chromium` where it is missing.
"""

from __future__ import annotations

import colorsys
import datetime as dt
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from crmw.airflow_runner import DAG_ID
from tests.airflow_runs import (
    SERVED_RUN_TIMEOUT, ServedAirflow, export_dir, metadata, run_tasks, served_airflow, simulate_clean_sources, wait_for_run,
)  # fmt: skip

pytestmark = pytest.mark.airflow

# The end-to-end tests' six months: enough for every chart of the report (the trained models
# publish), and a past date, so the freshness check is skipped as on any backfill.
START, DAYS = dt.date(2025, 1, 1), 181
RUN_DATE = START + dt.timedelta(days=DAYS - 1)
VIEWPORT = {"width": 1400, "height": 900}
# How long the UI may take to show what the metadata DB already holds (it polls every few seconds).
UI_TIMEOUT_MS = 60_000
# A past date is a backfill: its source-freshness check is skipped; every other task turns green.
NOT_RUN_ON_A_PAST_DATE = {"source_freshness"}


def chromium_executable() -> str | None:
    """The machine's Chromium (Debian's package puts it on PATH as `chromium`)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium driven by playwright, for the module; the tests skip without either."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -r requirements-test.txt)")
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no Chromium on PATH: the browser tests need Debian's chromium package (apt-get install chromium)")
    # playwright's own browser downloads are not used: the system's Chromium is launched instead.
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def served(browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServedAirflow, Path]]:
    """`crmw airflow` serving crm_daily on a DuckDB warehouse of the end-to-end tests' sources, for
    the module; with the folder the run's files for other tools (the report) go to."""
    folder = tmp_path_factory.mktemp("browser")
    sources = simulate_clean_sources(folder, START, DAYS)
    url = f"duckdb:///{folder / 'warehouse.duckdb'}"
    exports = export_dir(url, sources)
    settings = {"WAREHOUSE_URL": url, "CRMW_SOURCE_DIR": str(sources), "CRMW_EXPORT_DIR": str(exports), "CRMW_TASK_RETRIES": "0"}
    with served_airflow(settings, folder) as airflow:
        yield airflow, exports
    assert airflow.exit_code == 0, f"crmw airflow exited {airflow.exit_code}"


@dataclass
class TriggeredRun:
    run_id: str
    state: str | None
    seconds: float  # from the form's Trigger to the run's end
    screenshots: list[Path]


@pytest.fixture(scope="module")
def run_from_the_form(browser, served, tmp_path_factory: pytest.TempPathFactory) -> TriggeredRun:
    """Log in, open crm_daily's grid and graph, trigger a run for RUN_DATE from the form (the
    logical date typed in its date picker, the DAG unpaused on trigger as the form offers), and
    wait for the run to end."""
    airflow, _ = served
    folder = tmp_path_factory.mktemp("form")
    page = logged_in_page(browser, airflow, f"/dags/{DAG_ID}")
    try:
        shots = []
        page.get_by_test_id("grid-view-button").click()
        page.get_by_text("check_model_params", exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
        shots.append(screenshot(page, folder / "1-grid-before.png"))
        page.get_by_role("button", name=re.compile("^Show Graph")).click()
        page.get_by_test_id("rf__node-check_model_params").wait_for(timeout=UI_TIMEOUT_MS)
        shots.append(screenshot(page, folder / "2-graph-before.png"))

        page.get_by_test_id("trigger-dag-button").click()
        form = page.get_by_role("dialog").filter(has_text=f"Trigger Dag - {DAG_ID}")
        form.wait_for()
        form.get_by_test_id("datetime-input").click()
        page.get_by_placeholder("YYYY/MM/DD").fill(RUN_DATE.strftime("%Y/%m/%d"))
        page.get_by_placeholder("HH:mm").fill("00:00")
        form.get_by_text("Logical Date", exact=True).click()  # closes the date picker
        assert form.get_by_test_id("datetime-input").inner_text().strip() == f"{RUN_DATE:%b %d, %Y} 00:00"
        assert form.get_by_text(f"Unpause {DAG_ID} on trigger").is_visible()
        shots.append(screenshot(page, folder / "3-trigger-form.png"))
        triggered = time.monotonic()
        form.get_by_test_id("trigger-dag-submit").click()
        form.wait_for(state="hidden", timeout=UI_TIMEOUT_MS)
    finally:
        page.close()
    runs = metadata(airflow.home, "select run_id from dag_run where dag_id = ? and logical_date like ?", (DAG_ID, f"{RUN_DATE}%"))
    assert len(runs) == 1, f"expected one run of {RUN_DATE} from the form, found {runs}"
    state = wait_for_run(airflow, runs[0][0])
    run = TriggeredRun(runs[0][0], state, time.monotonic() - triggered, shots)
    print(f"\n{DAG_ID} {RUN_DATE} triggered from the form ended {state} after {run.seconds:.1f} s; screenshots: {folder}")
    return run


@pytest.mark.timeout(SERVED_RUN_TIMEOUT)
def test_a_run_triggered_from_the_form_turns_every_task_green_in_the_grid_and_the_graph(
        browser, served, run_from_the_form: TriggeredRun, tmp_path: Path) -> None:
    airflow, _ = served
    run = run_from_the_form
    not_green = [(task, state) for task, state, *_ in run_tasks(airflow, run.run_id) if state != "success"]
    assert run.state == "success", f"the run ended {run.state}; tasks not green: {not_green}"
    assert not_green == [(task, "skipped") for task in NOT_RUN_ON_A_PAST_DATE]

    page = logged_in_page(browser, airflow, f"/dags/{DAG_ID}/runs/{run.run_id}")
    try:
        # The grid: a row per task outside a group and per group (its badge sums up its tasks),
        # each with a badge in its state's colour; the UI polls the API, so it may lag a little.
        page.get_by_test_id("grid-view-button").click()
        cells = page.locator(f"a[data-testid^='grid-{run.run_id}-']")
        grid = until(lambda: {
            cell.get_attribute("data-testid").removeprefix(f"grid-{run.run_id}-"): is_green(cell.get_by_test_id("task-state-badge"))
            for cell in cells.all()
        }, lambda rows: rows and {row for row, green in rows.items() if not green} == NOT_RUN_ON_A_PAST_DATE)  # fmt: skip
        assert {"check_model_params", "extract_sales", "dbt", "ml", "publish", "report"} <= grid.keys(), grid
        assert {row for row, green in grid.items() if not green} == NOT_RUN_ON_A_PAST_DATE, grid
        shots = [screenshot(page, tmp_path / "grid.png")]

        # The graph of the run: the same tasks and groups as nodes, each with its state's badge.
        page.get_by_role("button", name=re.compile("^Show Graph")).click()
        nodes = page.locator(".react-flow__node")
        graph = until(lambda: {node.get_attribute("data-id"): node_state(node) for node in nodes.all()},
                      lambda found: found.keys() == grid.keys() and all(state for state, _ in found.values()))
        assert graph.keys() == grid.keys()
        assert {node: state for node, (state, green) in graph.items() if not green} == {task: "skipped" for task in NOT_RUN_ON_A_PAST_DATE}
        assert {state for state, green in graph.values() if green} == {"success"}
        shots.append(graph_screenshot(page, tmp_path / "graph.png"))
    finally:
        page.close()
    print(f"\nscreenshots: {', '.join(map(str, [*run.screenshots, *shots]))}")


@pytest.mark.timeout(SERVED_RUN_TIMEOUT)
def test_the_run_report_opens_without_console_errors_with_every_chart_drawn_and_sorts_on_a_click(
        browser, served, run_from_the_form: TriggeredRun, tmp_path: Path) -> None:
    _, exports = served
    assert run_from_the_form.state == "success", f"the run ended {run_from_the_form.state}"
    report = exports / "reports" / f"crm_report_{RUN_DATE}.html"
    charts_in_file = report.read_text().count("<svg")
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(f"console: {message.text}") if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    try:
        page.goto(report.as_uri(), wait_until="load")
        # Each chart has drawn: a box of its own on the page and paths inside it.
        charts = page.eval_on_selector_all(
            "figure.chart svg",
            """charts => charts.map(svg => {
                const box = svg.getBoundingClientRect();
                const drawn = Array.from(svg.querySelectorAll("path")).filter(path => {
                    const b = path.getBBox();
                    return b.width > 0 || b.height > 0;
                }).length;
                return {section: svg.closest("section").id, width: box.width, height: box.height, paths: drawn};
            })""",
        )
        assert len(charts) == charts_in_file > 0
        blank = [chart for chart in charts if not (chart["width"] > 0 and chart["height"] > 0 and chart["paths"] > 0)]
        assert not blank, f"charts that drew nothing: {blank}"
        assert {chart["section"] for chart in charts} == {"sales", "service", "segments", "churn", "value", "forecast"}
        # The inline script: a click on a numeric column's header sorts the table by it, a second click reverses it.
        table = page.locator("table.sortable").filter(has=page.locator("td.number")).first
        column = table.locator("tbody tr").first.locator("td").evaluate_all(
            "cells => cells.findIndex(cell => cell.classList.contains('number'))"
        )
        header = table.locator("th").nth(column)
        for order in ("ascending", "descending"):
            header.click()
            assert header.get_attribute("aria-sort") == order
            numbers = [float(re.sub(r"[,%\s]", "", text)) for text in table.locator(f"tbody td:nth-child({column + 1})").all_inner_texts()]
            assert numbers == sorted(numbers, reverse=order == "descending"), (order, numbers)
        shot = screenshot(page, tmp_path / "run_report.png", full_page=True)
    finally:
        page.close()
    assert not errors, errors
    print(f"\nscreenshot: {shot}")


def logged_in_page(browser, airflow: ServedAirflow, path: str):
    """A new page at `path` of the served UI, after its login form with the user and password the
    banner printed."""
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"http://127.0.0.1:{airflow.port}{path}")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(airflow.login[1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(path)), timeout=UI_TIMEOUT_MS)
    return page


def screenshot(page, path: Path, full_page: bool = False) -> Path:
    page.screenshot(path=str(path), full_page=full_page)
    return path


def graph_screenshot(page, path: Path) -> Path:
    """The graph alone, its nodes fitted to the pane with the details panel folded away (README's
    docs/crm_daily_graph.png is one)."""
    page.get_by_role("button", name="Collapse Details Panel").click()
    page.get_by_role("button", name="Fit View").click()
    page.wait_for_timeout(1000)  # the pane's fit is animated
    boxes = [node.bounding_box() for node in page.locator(".react-flow__node").all()]
    left, top = min(box["x"] for box in boxes) - 16, min(box["y"] for box in boxes) - 16
    right, bottom = max(box["x"] + box["width"] for box in boxes) + 16, max(box["y"] + box["height"] for box in boxes) + 16
    page.screenshot(path=str(path), clip={"x": left, "y": top, "width": right - left, "height": bottom - top})
    return path


def until(read, done, seconds: float = UI_TIMEOUT_MS / 1000):
    """What `read()` returns once `done` holds for it, or after `seconds` (the UI polls the API for
    task states, so it may show a finished run's last tasks a few seconds late)."""
    deadline = time.monotonic() + seconds
    while not done(value := read()) and time.monotonic() < deadline:
        time.sleep(2)
    return value


def node_state(node) -> tuple[str, bool]:
    """A graph node's state as its badge names it ("" before the UI has it), and whether the badge is green."""
    badge = node.get_by_test_id("state-badge")
    return (badge.inner_text().strip(), is_green(badge)) if badge.count() else ("", False)


def is_green(element) -> bool:
    """Whether an element's background is green: the colour the UI gives success. Airflow's theme
    writes colours in oklch(); a canvas turns any CSS colour into sRGB values to read its hue."""
    red, green, blue = element.evaluate(
        """element => {
            const canvas = document.createElement("canvas").getContext("2d");
            canvas.fillStyle = getComputedStyle(element).backgroundColor;
            canvas.fillRect(0, 0, 1, 1);
            return Array.from(canvas.getImageData(0, 0, 1, 1).data.slice(0, 3));
        }"""
    )
    hue, _, saturation = colorsys.rgb_to_hls(red / 255, green / 255, blue / 255)
    return 90 <= hue * 360 <= 160 and saturation > 0.3
