"""The README shows the two set-up commands and the source contract as the contract file says."""

from __future__ import annotations

import re

from extract_load.contract import load_contract, render_markdown
from tests.conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_two_setup_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block


def test_readme_renders_the_source_contract_as_the_contract_file_defines_it() -> None:
    match = re.search(r"<!-- source-contract:start[^>]*-->\n(.*)<!-- source-contract:end -->", README, re.S)
    assert match, "README.md lost its source-contract markers"
    assert match.group(1) == render_markdown(load_contract()), (
        "README.md's source contract is out of date: paste the output of"
        " `python -c 'from extract_load.contract import *; print(render_markdown(load_contract()), end=\"\")'`"
    )
