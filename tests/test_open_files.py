"""The open files limit: raised to the hard one at start, and connection caps checked
against it."""

from __future__ import annotations

import logging
import resource
import subprocess
import sys

from flatscope import open_files


def test_the_soft_limit_is_raised_to_the_hard_one():
    """In a child process started with a low soft limit, as container runtimes do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256) if hard == resource.RLIM_INFINITY else min(hard - 1, 256)
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, {hard}))\n"
        "from flatscope import open_files\n"
        "print(open_files.raise_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    returned, now = map(int, done.stdout.split())
    assert now == hard
    assert returned == (-1 if hard == resource.RLIM_INFINITY else hard)


def test_caps_that_do_not_fit_the_limit_are_warned_about_by_flag(caplog):
    caplog.set_level(logging.WARNING, logger="flatscope.open_files")
    open_files.check_caps(10_000, {"--max-connections": 4096, "--http-max-connections": 1000})
    assert not caplog.records
    open_files.check_caps(1024, {"--max-connections": 4096, "--http-max-connections": 1000})
    [warning] = caplog.records
    assert "--max-connections 4096" in warning.getMessage()
    assert "ulimit -n" in warning.getMessage()
    caplog.clear()
    open_files.check_caps(1_000_000, {"--max-connections": 0})  # no cap: no bound
    assert "--max-connections 0" in caplog.records[0].getMessage()
    caplog.clear()
    open_files.check_caps(-1, {"--max-connections": 0})  # no limit at all
    assert not caplog.records
