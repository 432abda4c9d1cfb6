"""The run report on a warehouse that holds nothing yet: every section says why it is empty, and
the page is whole, self-contained and listed in the index. The report of a real run (every model
published, charts drawn, no personal field) is checked by the end-to-end DAG tests on both engines."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from reporting.run_report import INDEX, SECTION_BUILDERS, write_report
from warehouse import connect

DAY = dt.date(2025, 6, 30)


def test_a_report_of_an_empty_warehouse_says_what_each_section_lacks_and_is_indexed(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path / 'warehouse.duckdb'}"
    with connect(url):
        pass  # a new, empty warehouse file
    folder = tmp_path / "reports"
    path = write_report(DAY, "manual__test", url, folder)
    page = path.read_text()
    assert path.name == f"crm_report_{DAY}.html"
    assert page.count('<section id="') == len(SECTION_BUILDERS)
    assert page.count('class="missing"') == len(SECTION_BUILDERS)
    assert "customer_segments" in page and "No model has run on this warehouse yet" in page
    assert_self_contained(page)
    # A second date: the index lists both, newest first.
    write_report(DAY + dt.timedelta(days=1), "manual__test", url, folder)
    index = (folder / INDEX).read_text()
    assert re.findall(r'href="crm_report_([\d-]+)\.html"', index) == [str(DAY + dt.timedelta(days=1)), str(DAY)]
    assert not list(folder.glob("*.partial"))


def assert_self_contained(page: str) -> None:
    """Nothing fetched from elsewhere when the page opens: no external script, style, image or font."""
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the report links a resource outside itself"
    assert "@import" not in page and not re.search(r"url\((?!#)", page), "the report loads a style or font from elsewhere"
