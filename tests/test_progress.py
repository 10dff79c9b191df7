"""What `sync` and `backfill` show while they run (contract §1): on a terminal a progress bar on stderr, the
real program run under a pseudo-terminal; under cron and with --json, no bar."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

from conftest import Cli, Result, sell

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")
BAR = re.compile(r"100% of the window .*?(\d+) sales read, (\d+) written, (\d+) Salesforce calls\s+"
                 r"\d+:\d\d:\d\d elapsed, [-\d:]+ left")


def on_a_terminal(cli: Cli, *args: str) -> Result:
    """The program with stderr on a pseudo-terminal 200 columns wide, stdout piped, as a person at a shell with
    `| jq` would run it; batches of 10 sales, so that the bar moves."""
    program = ("import importlib, sys\nsetattr(importlib.import_module('lspos_sync.engine'), 'BATCH_SALES', 10)\n"
               "from lspos_sync.cli import run\nrun()")
    leader, follower = pty.openpty()
    env = cli._environment({"TERM": "xterm-256color", "COLUMNS": "200"})
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-c", program, *args], env=env, cwd=cli.cwd, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the program closed its end: everything it showed is read
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    stdout, _ = process.communicate(timeout=120)
    reader.join(timeout=30)
    os.close(leader)
    return Result(process.returncode, stdout, ANSI.sub("", shown.decode(errors="replace")))


@pytest.fixture
def day_of_sales(lightspeed, boutique) -> int:
    """45 sales spread over the day the first sync reads (LSPOS_SYNC_START is a day ago)."""
    now = datetime.now(timezone.utc)
    for i in range(45):
        sell(lightspeed, boutique, at=now - timedelta(hours=23) + timedelta(minutes=30 * i))
    return 45


def test_sync_on_a_terminal_shows_the_window_covered_sales_and_salesforce_calls(cli, day_of_sales):
    result = on_a_terminal(cli, "sync")

    assert result.code == 0, result.stderr
    assert "sync account 182255" in result.stderr
    read, written, calls = (int(n) for n in BAR.findall(result.stderr)[-1])
    assert (read, written) == (day_of_sales, day_of_sales)
    assert f"{calls} Salesforce call(s)" in result.stdout  # the bar counts what the summary line reports
    # The bar moved with the batches: it showed part of the window covered before the end
    shares = [int(share) for share in re.findall(r"(\d+)% of the window", result.stderr)]
    assert any(0 < share < 100 for share in shares), shares
    assert "━" in result.stderr
    assert result.stdout.count("\n") == 1  # stdout keeps its one summary line


def test_backfill_on_a_terminal_shows_the_bar(cli, day_of_sales):
    since = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")

    result = on_a_terminal(cli, "backfill", "--from", since)

    assert result.code == 0, result.stderr
    assert "backfill account 182255" in result.stderr
    assert [int(n) for n in BAR.findall(result.stderr)[-1][:2]] == [day_of_sales, day_of_sales]


def test_json_on_a_terminal_shows_no_bar_and_keeps_stdout_one_object(cli, day_of_sales):
    result = on_a_terminal(cli, "sync", "--json")

    assert result.code == 0, result.stderr
    assert "Salesforce calls" not in result.stderr and "of the window" not in result.stderr
    assert result.json["sales"]["written"] == day_of_sales


def test_under_cron_there_is_no_bar(cli, day_of_sales):
    result = cli("sync")

    assert result.code == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.count("\n") == 1
