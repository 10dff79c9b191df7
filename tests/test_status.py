"""`lspos-sync status`: the recent runs, the checkpoint lag and parked rejects, and the exit code a monitor reads."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from conftest import sell

from lspos_sync.status import lag_minutes


def test_status_reports_the_last_run_with_its_figures(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="ana@example.com"),
         lines=((1, "120.00"), (2, "45.50")))
    sell(lightspeed, boutique)
    assert cli("sync").code == 0

    result = cli("status", "--json")

    assert result.code == 0, result.stderr
    assert (result.json["outcome"], result.json["problems"], result.json["rejected_parked"]) == ("ok", [], 0)
    assert result.json["checkpoints"]["182255"]["lag_minutes"] == 0
    [run] = result.json["runs"]
    assert (run["command"], run["outcome"], run["exit_code"]) == ("sync", "ok", 0)
    assert run["sales"] == {"read": 2, "written": 2, "rejected": 0}
    assert run["records_written"] == {"Account created": 1, "Sales_Transaction__c": 2, "Sales_Line_Item__c": 3}
    assert run["salesforce_api_calls"] > 0 and run["lightspeed_requests"] > 0
    assert run["duration_seconds"] >= 0 and run["started_at"] <= run["ended_at"]
    assert result.json["last_run"] == run


def test_status_plain_output_is_a_few_readable_lines(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    assert cli("sync").code == 0

    result = cli("status")

    assert result.code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("account 182255: sales synced up to less than a minute ago (checkpoint ")
    assert "rejected sales parked: 0" in lines
    assert any(" sync ok (exit 0) in " in line and "1 sale(s) read, 1 written, 0 rejected" in line for line in lines)
    assert lines[-1] == "status: OK"


def test_failed_last_sync_exits_1_until_a_sync_succeeds(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique, lightspeed.add_customer("Bo", "Chen", email="bo@example.com"))
    failed = cli("sync", env={"LSPOS_PERSON_ACCOUNT_RECORD_TYPE": "NoSuchType"})
    assert failed.code == 2  # a configuration error, found in the org

    result = cli("status", "--json")

    assert result.code == 1
    assert result.json["outcome"] == "failed"
    assert result.json["last_run"]["outcome"] == "failed" and result.json["last_run"]["exit_code"] == 2
    assert "NoSuchType" in result.json["last_run"]["error"]
    assert "the last sync" in result.json["problems"][0] and "failed" in result.json["problems"][0]
    assert "status: FAILING" in cli("status").stdout

    assert cli("sync").code == 0
    assert cli("status").code == 0


def test_salesforce_down_makes_status_exit_1(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    salesforce.fail_next(50, status=503, path_contains="/composite")
    assert cli("sync").code == 1

    result = cli("status", "--json")

    assert result.code == 1
    assert "503" in result.json["runs"][0]["error"]


def test_lag_over_the_threshold_exits_1(cli):
    two_hours_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    assert cli("checkpoint", "reset", "--to", two_hours_ago.isoformat(), "--yes").code == 0

    over = cli("status", "--max-lag-minutes", "60", "--json")
    within = cli("status", "--max-lag-minutes", "180", "--json")

    assert over.code == 1
    assert over.json["checkpoints"]["182255"]["lag_minutes"] in (119, 120, 121)
    assert "minutes old, over --max-lag-minutes 60" in over.json["problems"][0]
    assert within.code == 0 and within.json["problems"] == []
    assert cli("status").code == 0  # without the option the lag is reported, not judged
    assert "sales synced up to 2 hours ago" in cli("status").stdout


def test_no_checkpoint_fails_a_lag_check_and_creates_no_state_file(cli, state_path):
    plain = cli("status", "--json")
    checked = cli("status", "--max-lag-minutes", "10", "--json")

    assert plain.code == 0 and plain.json["runs"] == []
    assert plain.json["checkpoints"] == {"182255": {"cursor": None, "updated_at": None, "lag_minutes": None}}
    assert checked.code == 1 and "no checkpoint yet" in checked.json["problems"][0]
    assert not state_path.exists()


def test_parked_rejects_are_counted_and_do_not_fail_status(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    sell(lightspeed, boutique, lines=((1, "999.00"),))
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: (r.get("Total__c") or 0) > 500,
                                   "Totals over 500 need approval")
    assert cli("sync").code == 3

    result = cli("status", "--json")

    assert result.code == 0
    assert result.json["rejected_parked"] == 1
    assert (result.json["runs"][0]["outcome"], result.json["runs"][0]["exit_code"]) == ("rejected", 3)
    assert result.json["runs"][0]["sales"] == {"read": 2, "written": 1, "rejected": 1}
    assert "rejected sales parked: 1 (retried by every run)" in cli("status").stdout


def test_runs_are_listed_newest_first(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique, at=datetime.now(timezone.utc) - timedelta(days=3))
    assert cli("backfill", "--from", (datetime.now(timezone.utc) - timedelta(days=5)).isoformat()).code == 0
    assert cli("sync").code == 0

    runs = cli("status", "--json").json["runs"]

    assert [run["command"] for run in runs] == ["sync", "backfill"]
    assert runs[1]["sales"]["written"] == 1 and runs[1]["window"]["from"] is not None


def test_status_flags_a_run_that_was_killed(cli, lightspeed, salesforce, boutique, state_path):
    import sqlite3

    sell(lightspeed, boutique)
    assert cli("sync").code == 0
    with sqlite3.connect(state_path) as db:  # what a SIGKILL leaves: a run row still marked running
        db.execute("INSERT INTO run (command, started_at) VALUES ('sync', '2026-01-01T00:00:00+00:00')")
    result = cli("status", "--json")
    assert result.code == 1
    assert any("killed" in problem for problem in result.json["problems"])


def test_a_checkpoint_within_the_date_headers_second_is_no_lag_not_a_future_one():
    # The host's lead on Lightspeed is measured against Date's whole second, so it runs up to a second (plus the
    # response's travel) over; a checkpoint taken at Lightspeed's now reads as just past the host's now less it.
    now = datetime(2026, 12, 2, 23, 47, 22, 600_000, tzinfo=timezone.utc)
    ahead = timedelta(seconds=0.6)
    assert lag_minutes(now, ahead, now - ahead + timedelta(milliseconds=400)) == 0
    assert lag_minutes(now, ahead, now - ahead - timedelta(minutes=3, seconds=10)) == 3
    assert lag_minutes(now, ahead, now - ahead + timedelta(minutes=5)) < 0  # set by hand: still in the future
    assert lag_minutes(now, ahead, None) is None


def test_parked_customers_are_counted_beside_the_parked_sales(cli, lightspeed, salesforce):
    feed = {"LSPOS_SYNC_CUSTOMERS": "true"}
    salesforce.add_validation_rule("Account", lambda r: r.get("LastName") == "Lima", "No Limas today")
    lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    assert cli("sync", env=feed).code == 3

    result = cli("status", "--json", env=feed)

    assert result.code == 0  # parked records wait for a retry; they do not make status fail
    assert (result.json["rejected_parked"], result.json["customers_parked"]) == (0, 1)
    lines = cli("status", env=feed).stdout.splitlines()
    assert "rejected sales parked: 0" in lines
    assert "rejected customers parked: 1 (retried by every run with LSPOS_SYNC_CUSTOMERS on)" in lines


def test_status_without_the_customer_feed_has_no_customer_line_until_one_is_parked(cli, lightspeed, salesforce):
    lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    assert cli("sync").code == 0

    assert cli("status", "--json").json["customers_parked"] == 0
    assert not any("customers parked" in line for line in cli("status").stdout.splitlines())
    assert "rejected customers parked: 0" in cli("status", env={"LSPOS_SYNC_CUSTOMERS": "true"}).stdout.splitlines()


def test_checkpoint_show_and_rejects_list_before_any_run_say_so_and_create_no_state_file(cli, state_path):
    shown = cli("checkpoint", "show", "--json")
    listed = cli("rejects", "list", "--json")

    assert shown.code == 0 and shown.json == {
        "checkpoints": {"182255": {"cursor": None, "updated_at": None, "lag_minutes": None}}, "last_run": None}
    assert listed.code == 0 and listed.json["rejects"] == [] and listed.json["rejected_customers"] == []
    assert "account 182255: checkpoint not set" in cli("checkpoint", "show").stdout
    assert not state_path.exists()
