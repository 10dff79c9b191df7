"""Rejected records, failed runs and the lock: exit codes 1, 3 and 4 and what the checkpoint does."""

from __future__ import annotations

import fcntl
import os
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import sell


def test_rejected_sale_is_parked_listed_and_retried_until_it_goes_through(cli, lightspeed, salesforce, boutique):
    good = sell(lightspeed, boutique)
    bad = sell(lightspeed, boutique, lines=((1, "999.00"),))
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: (r.get("Total__c") or 0) > 500,
                                   "Totals over 500 need approval")

    first = cli("sync", "--json")

    assert first.code == 3
    assert [r["sale_key"] for r in first.json["rejected"]] == [f"182255-{bad}"]
    assert "Totals over 500 need approval" in first.json["rejected"][0]["reason"]
    assert f"rejected 182255-{bad}" in first.stderr
    keys = {r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")}
    assert keys == {f"182255-{good}"}
    checkpoint = first.json["checkpoint"]
    assert checkpoint is not None  # a rejected record does not hold the checkpoint back

    still = cli("sync", "--json")
    assert still.code == 3 and still.json["sales"]["retried"] == 1

    salesforce.clear_validation_rules()
    fixed = cli("sync", "--json")
    assert fixed.code == 0, fixed.stderr
    assert fixed.json["rejected"] == []
    assert {r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")} == {f"182255-{good}", f"182255-{bad}"}


def test_a_parked_sale_refused_again_at_its_retry_waits_for_the_next_run(cli, lightspeed, salesforce, boutique):
    # Retried first, read afresh by ID; refused again, it is not sent again from the window's pages (the
    # look-back holds it): one attempt a run, listed once, exit 3; a later run writes it once the refusal clears.
    sale = sell(lightspeed, boutique)
    refusals = iter(range(2))  # a rule on another object, say: the first two saves are refused
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: next(refusals, None) is not None,
                                   "Busy with another integration")
    assert cli("sync").code == 3  # parked

    again = cli("sync", "--json")  # retried first and refused again; skipped on the pages

    assert (again.code, [r["sale_key"] for r in again.json["rejected"]]) == (3, [f"182255-{sale}"])
    assert again.json["sales"]["written"] == 0 and salesforce.records("Sales_Transaction__c") == []
    later = cli("sync", "--json")
    assert (later.code, later.json["rejected"], later.json["sales"]["written"]) == (0, [], 1)
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]
    assert cli("rejects", "list", "--json").json["rejects"] == []


def test_a_rejected_new_account_holds_its_sales_back(cli, lightspeed, salesforce, boutique):
    salesforce.add_validation_rule("Account", lambda r: (r.get("LastName") or "") == "Blocked", "No")
    blocked = sell(lightspeed, boutique, lightspeed.add_customer("Al", "Blocked", email="al@example.com"))

    result = cli("sync", "--json")

    assert result.code == 3
    assert result.json["rejected"][0]["sale_key"] == f"182255-{blocked}"
    assert salesforce.records("Sales_Transaction__c") == []  # never linked to nothing by accident


def test_salesforce_down_fails_the_run_and_holds_the_checkpoint(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    assert cli("checkpoint", "reset", "--to", "2026-01-01T00:00:00Z", "--yes").code == 0
    salesforce.fail_next(50, status=503, path_contains="/composite")

    result = cli("sync", "--json")

    assert result.code == 1
    assert result.json["outcome"] == "failed" and "503" in result.json["error"]
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] == "2026-01-01T00:00:00+00:00"
    assert cli("checkpoint", "show", "--json").json["last_run"]["outcome"] == "failed"


def test_transient_salesforce_failure_is_retried(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique)
    salesforce.fail_next(1, status=503, path_contains="/composite")
    result = cli("sync")
    assert result.code == 0, result.stderr
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]


def test_lost_composite_response_is_replayed_without_duplicates(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="ana@example.com"))
    salesforce.drop_next(1, path_contains="/composite", after_commit=True)
    result = cli("sync")
    assert result.code == 0, result.stderr
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]
    assert len([a for a in salesforce.records("Account") if a.get("IsPersonAccount")]) == 1


def test_second_run_while_one_holds_the_lock_exits_4_at_once(cli, lightspeed, salesforce, boutique, state_path):
    import fcntl

    state_path.parent.mkdir(parents=True, exist_ok=True)
    holder = os.open(f"{state_path}.182255.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as a running sync holds it
    try:
        started = time.monotonic()
        result = cli("sync")
        assert result.code == 4 and time.monotonic() - started < 10
        assert "lock" in result.stderr
        assert cli("backfill", "--from", "2026-01-01").code == 4
    finally:
        os.close(holder)
    assert salesforce.records("Sales_Transaction__c") == []


def test_lock_of_a_killed_run_is_taken_over(cli, lightspeed, salesforce, boutique, state_path):
    for _ in range(150):
        sell(lightspeed, boutique)
    process = cli.start("sync")
    lock = f"{state_path}.182255.lock"
    deadline = time.monotonic() + 30
    while lightspeed.request_count("Sale.json") == 0 and time.monotonic() < deadline:  # under way
        time.sleep(0.01)
    assert process.poll() is None and _held(lock)  # killed while it holds the lock
    process.kill()
    process.wait()
    assert not _held(lock)  # the kernel let go of it with the process
    result = cli("sync")
    assert result.code == 0, result.stderr
    assert len(salesforce.records("Sales_Transaction__c")) == 150


def test_one_run_at_a_time_per_state_store_even_when_the_store_is_named_through_a_symlink(
        cli, lightspeed, boutique, state_path, tmp_path):
    """§4 "One run at a time, per state store: a second `sync` while one runs exits 4 at once"; exit code 4:
    "another run holds the lock; this one did nothing". The lock must follow the store, not the spelling of its
    path: a second run that reaches the same SQLite file through a symlink (e.g. /var/lib/lspos -> /data/lspos)
    is refused too."""
    sell(lightspeed, boutique)
    assert cli("checkpoint", "reset", "--to", "2020-01-01", "--yes").code == 0
    linked = tmp_path / "elsewhere.db"
    linked.symlink_to(state_path)
    lightspeed.after_request = lambda request: time.sleep(1.0)  # the first run is slow: it holds the lock a while
    first = cli.start("sync")
    try:
        deadline = time.monotonic() + 30
        while not lightspeed.requests and time.monotonic() < deadline:  # it has the lock once it reads Lightspeed
            time.sleep(0.05)
        assert lightspeed.requests, "the first run never reached Lightspeed"
        same_path = cli("sync", "--json")
        assert first.poll() is None, "the first run ended too soon: the test proves nothing"
        through_link = cli("sync", "--json", "--state", str(linked))
    finally:
        first.communicate(timeout=120)
        lightspeed.after_request = None
    assert same_path.code == 4, same_path.stderr  # the same path: refused, as promised
    assert through_link.code == 4, (through_link.stdout, through_link.stderr)  # the same store through a link


def test_a_person_account_record_type_the_org_lacks_exits_2_naming_the_variable(cli, lightspeed, salesforce,
                                                                                 boutique):
    sell(lightspeed, boutique, lightspeed.add_customer("Bo", "Chen", email="bo@example.com"))

    result = cli("sync", "--json", env={"LSPOS_PERSON_ACCOUNT_RECORD_TYPE": "NoSuchType"})

    assert result.code == 2 and "LSPOS_PERSON_ACCOUNT_RECORD_TYPE" in result.json["error"]
    assert salesforce.records("Sales_Transaction__c") == []
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] is None
    assert cli("sync").code == 0  # the right name: the sale goes in
    assert len(salesforce.records("Sales_Transaction__c")) == 1


def _held(path: str) -> bool:
    """Whether a process holds the run lock at `path` (this one can take it only if nobody does)."""
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing lets go of it, if it was taken here
    return False


def test_malformed_sale_from_lightspeed_is_parked_not_fatal(cli, lightspeed, salesforce, boutique):
    good = sell(lightspeed, boutique)
    bad = sell(lightspeed, boutique)
    lightspeed.corrupt_sale(bad, calcTotal="12,50")

    result = cli("sync", "--json")

    assert result.code == 3, result.stderr
    assert result.json["rejected"][0]["sale_key"] == f"182255-{bad}"
    assert "INVALID_LIGHTSPEED_DATA" in result.json["rejected"][0]["reason"]
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{good}"]


def test_a_dry_run_lists_a_sale_that_does_not_read_exits_3_and_parks_nothing(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    bad = sell(lightspeed, boutique)
    lightspeed.corrupt_sale(bad, calcTotal="12,50")

    preview = cli("dry-run", "--json")

    # exit 3 foretells the sync's: the sale cannot be planned, and the sync would park it
    assert preview.code == 3, preview.stderr
    assert [(r["sale_key"], r["reason"]) for r in preview.json["rejected"]] == [
        (f"182255-{bad}", "INVALID_LIGHTSPEED_DATA: calcTotal: Invalid decimal string: '12,50'")]
    assert cli("rejects", "list", "--json").json["rejects"] == []
    assert salesforce.records("Sales_Transaction__c") == []


@pytest.mark.parametrize("total", ["1e30", "-123456789012345678901234567.5"])
def test_an_amount_too_large_for_any_salesforce_number_is_parked_not_fatal(cli, lightspeed, salesforce, boutique,
                                                                           total):
    # Every number is a string (fact sheet §4.2): one no Salesforce field can hold, too large for the 28 digits
    # of Decimal's default context, is the sale's problem, not the run's (the sales around it are written).
    good = sell(lightspeed, boutique)
    bad = sell(lightspeed, boutique)
    lightspeed.corrupt_sale(bad, calcTotal=total)

    result = cli("sync", "--json")

    assert result.code == 3, result.stderr
    assert [r["sale_key"] for r in result.json["rejected"]] == [f"182255-{bad}"]
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{good}"]


def test_lost_response_to_a_line_delete_is_not_a_rejection(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique, lines=((1, "10"), (1, "20")))
    assert cli("sync").code == 0
    line = lightspeed.sale(sale)["SaleLines"]["SaleLine"][1]["saleLineID"]
    lightspeed.remove_line(sale, int(line))
    # the answer to the write that deletes the removed line is lost after Salesforce committed it
    salesforce.drop_next(1, path_contains="/composite", after_commit=True, body_contains='"DELETE"')

    result = cli("sync", "--json")

    assert result.code == 0, result.stderr
    assert len(salesforce.records("Sales_Line_Item__c")) == 1
    assert any(r.dropped for r in salesforce.requests)


def test_a_killed_run_is_marked_interrupted_by_the_next_one(cli, lightspeed, salesforce, boutique, state_path):
    import sqlite3

    from lspos_sync.state import StateStore

    state_path.parent.mkdir(parents=True, exist_ok=True)
    StateStore(state_path).close()  # creates the store
    with sqlite3.connect(state_path) as db:  # what a SIGKILL leaves behind
        db.execute("INSERT INTO run (command, started_at) VALUES ('sync', '2026-01-01T00:00:00+00:00')")
    assert cli("sync").code == 0
    with sqlite3.connect(state_path) as db:
        outcomes = [row[0] for row in db.execute("SELECT outcome FROM run ORDER BY id")]
    assert outcomes == ["interrupted", "ok"]


def test_a_void_feed_refused_past_its_first_page_fails_the_run_instead_of_dropping_the_voids(cli, lightspeed,
                                                                                             salesforce, boutique):
    two_hours_ago = datetime.now(timezone.utc) - timedelta(hours=2)  # older than the look-back
    sales = [sell(lightspeed, boutique, at=two_hours_ago) for _ in range(3)]
    assert cli("sync").code == 0
    lightspeed.void_moves_updatetime = False  # seen in the SaleVoid feed only (fact sheet §9, unconfirmed)
    for sale in sales:
        lightspeed.void_sale(sale)
    # The feed's second page refused (a cursor Lightspeed no longer takes, say): not "the feed is unavailable".
    lightspeed.fail_next(1, status=400, path_suffix="SaleVoid.json", only_with="after", message="Invalid cursor")

    result = cli("sync", constants={"lightspeed.client.PAGE_SIZE": 2})

    assert result.code == 1, result.stderr
    assert "SaleVoid" in result.stderr and result.stderr.count("\n") == 1
    assert cli("sync").code == 0  # the checkpoint did not pass the voids: the next run writes them
    assert {r["Status__c"] for r in salesforce.records("Sales_Transaction__c")} == {"Voided"}


def test_the_run_history_records_how_many_sales_are_parked_not_each_one_every_run(cli, lightspeed, salesforce,
                                                                                    boutique, state_path):
    # Parked sales are retried and listed by every run, 144 a day, and the history keeps 90 days of runs: a run's
    # row holding the list grew the state file by the list every ten minutes (40 parked: 11 KB a run, 140 MB kept).
    import sqlite3

    for _ in range(40):
        sell(lightspeed, boutique, lines=((1, "999.00"),))
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: (r.get("Total__c") or 0) > 500,
                                   "Totals over 500 need approval")
    assert cli("sync").code == 3

    again = cli("sync", "--json")

    assert again.code == 3 and len(again.json["rejected"]) == 40  # the output still lists each one
    with sqlite3.connect(state_path) as db:
        recorded = db.execute("SELECT summary FROM run ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert len(recorded) < 1_500, len(recorded)
    assert '"rejected": 40' in recorded
    status = cli("status", "--json").json
    assert status["runs"][0]["sales"]["rejected"] == 40 and status["rejected_parked"] == 40
    assert len(cli("rejects", "list", "--json").json["rejects"]) == 40


def test_an_open_sale_that_does_not_read_is_left_for_its_completion_not_parked(cli, lightspeed, salesforce, boutique):
    # An open sale is never written (contract §4), so one sent malformed is nothing to park: parked, it was read
    # by ID and parked again by every run, exit 3 every ten minutes for as long as it stayed open (an abandoned
    # sale voided at the till: forever). Here the SaleVoid feed names it; it completes later and is written then.
    good = sell(lightspeed, boutique)
    abandoned = sell(lightspeed, boutique, completed=False)
    lightspeed.corrupt_sale(abandoned, calcTotal="")
    lightspeed.void_sale(abandoned)

    first = cli("sync", "--json")

    assert (first.code, first.json["rejected"], first.json["sales"]["skipped_open"]) == (0, [], 1), first.stderr
    assert cli("rejects", "list", "--json").json["rejects"] == []
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{good}"]
