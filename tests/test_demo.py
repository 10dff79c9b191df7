"""`lspos-sync demo`: the seeded boutique, synced by the real commands on the built-in emulators, with no
credentials and without touching the user's .env or state file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs the demo from a directory holding the user's own .env, with their state path in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSPEED_", "SALESFORCE_", "LSPOS_"))}
    env["LSPOS_STATE_PATH"] = str(tmp_path / "user-state.db")
    return subprocess.run([sys.executable, "-m", "lspos_sync", "demo", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def user_env(tmp_path: Path) -> Path:
    env_file = tmp_path / ".env"
    env_file.write_text("LIGHTSPEED_ACCOUNT_ID=999\nSALESFORCE_INSTANCE_URL=https://acme.my.salesforce.com\n")
    return env_file


def test_demo_syncs_the_whole_boutique_and_reports_it(tmp_path, user_env):
    before = user_env.read_text()

    done = demo(tmp_path, "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout is exactly one JSON object
    assert (report["outcome"], report["exit_code"]) == ("ok", 0)
    assert report["seconds"] < 120
    seeded = report["seeded"]
    assert (seeded["shops"], seeded["items"], seeded["clients"], seeded["clients_already_in_salesforce"]) == \
        (3, 30, 200, 40)
    assert 380 <= seeded["sales"] <= 420 and seeded["refunds"] > 0 and seeded["voids"] > 0

    assert all(step["exit_code"] in step["expected"] for step in report["steps"])
    assert [step["command"].split()[1] for step in report["steps"]] == [
        "dry-run", "backfill", "sync", "sync", "reconcile", "status"]
    _, backfill, first_sync, second_sync, reconcile, _ = report["steps"]
    assert reconcile["exit_code"] == 0  # Lightspeed and Salesforce agree after the syncs
    # voided sales come twice, from the SaleVoid feed and from the pages (the second time unchanged)
    assert seeded["sales"] - 5 <= backfill["sales"]["written"] <= backfill["sales"]["read"]
    assert backfill["ambiguous"] > 0
    # nothing changed since the backfill: the sync writes again only the ambiguous sales it re-reads (an ambiguous
    # sale is resolved afresh every time it is read), and costs no Salesforce call when there are none; which of
    # the seeded sales fall in its last-day window depends on the time of day the demo runs
    assert first_sync["sales"]["written"] == first_sync["ambiguous"]
    assert (first_sync["salesforce_api_calls"] == 0) == (first_sync["ambiguous"] == 0)
    assert second_sync["sales"]["written"] == 7  # five new sales, a void, an edit
    assert second_sync["records"]["delete_lines"] == 1
    # the second sync runs with LSPOS_SYNC_CUSTOMERS=true: the clients who never bought get their Person Account
    fed = second_sync["customers"]
    assert fed["read"] >= seeded["clients"] and fed["create"] > 0 and fed["ambiguous"] > 0 and fed["rejected"] == 0
    assert "customers" not in first_sync

    # every completed sale and line landed exactly once
    assert report["salesforce"]["Sales_Transaction__c"] == report["lightspeed"]["completed_sales"] == seeded["sales"]
    assert report["salesforce"]["Sales_Line_Item__c"] == report["lightspeed"]["lines"]
    assert set(report["match_status"]) == {"Linked", "Email", "Phone", "Created", "Guest", "Ambiguous"}
    assert sum(report["match_status"].values()) == seeded["sales"]
    assert report["transaction_status"]["Refund"] == seeded["refunds"]
    assert report["transaction_status"]["Voided"] == seeded["voids"]
    assert report["salesforce"]["Account_linked"] > 0 and report["salesforce"]["Account_created"] > 0
    # the demo runs with LSPOS_ROLLUPS=true: every account's roll-ups equal its transactions, recomputed apart
    assert report["rollups"]["exact"] is True and report["rollups"]["purchases"] > 0

    assert "$ lspos-sync backfill --from " in done.stderr  # the narration goes to stderr under --json
    assert user_env.read_text() == before
    assert not (tmp_path / "user-state.db").exists()
    assert report["kept"] is None


def test_demo_keep_leaves_the_directory_and_prints_its_path(tmp_path, user_env):
    done = demo(tmp_path, "--keep")

    assert done.returncode == 0, done.stderr
    kept_line = next(line for line in done.stdout.splitlines() if line.startswith("Kept "))
    kept = Path(kept_line.split()[1].rstrip(":"))
    try:
        assert (kept / "state.db").is_file() and (kept / "demo.env").is_file()
        assert "$ lspos-sync sync --env-file demo.env" in done.stdout
        assert done.stdout.rstrip().splitlines()[-1].startswith("demo ok in ")
    finally:
        shutil.rmtree(kept)
