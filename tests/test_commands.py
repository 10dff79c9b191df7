"""backfill, dry-run and checkpoint: options, --json, exit codes and what each leaves untouched (contract §1)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from conftest import Cli, delete_by_hand, sell

DAY = timedelta(days=1)


def ago(days: float) -> datetime:
    return datetime.now(timezone.utc) - days * DAY


def written_keys(salesforce) -> set[str]:
    return {r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")}


def test_backfill_loads_its_window_only_and_leaves_the_checkpoint(cli, lightspeed, salesforce, boutique):
    before = sell(lightspeed, boutique, at=ago(40))
    inside = [sell(lightspeed, boutique, at=ago(d)) for d in (20, 15, 10)]
    after = sell(lightspeed, boutique, at=ago(2))
    cli("checkpoint", "reset", "--to", ago(1).isoformat(), "--yes")
    checkpoint = cli("checkpoint", "show", "--json").json

    result = cli("backfill", "--from", ago(30).date().isoformat(), "--to", ago(5).isoformat(), "--json")

    assert result.code == 0, result.stderr
    assert written_keys(salesforce) == {f"182255-{s}" for s in inside}
    assert f"182255-{before}" not in written_keys(salesforce) and f"182255-{after}" not in written_keys(salesforce)
    # the cursor and when it was set; the lag moves with the clock lead the backfill measured (whole-second `Date`)
    after_backfill = cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]
    assert {k: after_backfill[k] for k in ("cursor", "updated_at")} == \
        {k: checkpoint["checkpoints"]["182255"][k] for k in ("cursor", "updated_at")}
    assert result.json["checkpoint"] is None


def test_backfill_run_again_is_harmless(cli, lightspeed, salesforce, boutique):
    for d in (3, 2):
        sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email=f"ana{d}@example.com"), at=ago(d))
    assert cli("backfill", "--from", ago(4).isoformat()).code == 0
    snapshot = {name: salesforce.records(name) for name in ("Account", "Sales_Transaction__c", "Sales_Line_Item__c")}

    again = cli("backfill", "--from", ago(4).isoformat(), "--json")

    assert again.code == 0 and again.json["sales"]["unchanged"] == 2
    assert {name: salesforce.records(name) for name in snapshot} == snapshot


def test_dry_run_previews_every_decision_and_writes_nothing(cli, lightspeed, salesforce, boutique, state_path):
    rt = salesforce.person_account_record_type_id
    known = salesforce.insert("Account", {"RecordTypeId": rt, "LastName": "Lima", "PersonEmail": "ana@example.com"})
    ana = lightspeed.add_customer("Ana", "Lima", email="ANA@example.com")
    new = lightspeed.add_customer("Bo", "Chen", email="bo@example.com")
    sales = [sell(lightspeed, boutique, ana), sell(lightspeed, boutique, new, lines=((1, "10"), (2, "5"))),
             sell(lightspeed, boutique)]
    records_before = salesforce.records("Account")

    result = cli("dry-run", "--json")

    assert result.code == 0, result.stderr
    plans = {p["sale_id"]: p for p in result.json["plans"]}
    assert (plans[sales[0]]["match"], plans[sales[0]]["account_id"]) == ("Email", known)
    assert "ana@example.com" in plans[sales[0]]["reason"]
    assert (plans[sales[1]]["match"], plans[sales[1]]["lines"], plans[sales[1]]["total"]) == ("Created", 2, 20.0)
    assert plans[sales[2]]["match"] == "Guest"
    assert {p["action"] for p in plans.values()} == {"create"}
    assert salesforce.records("Account") == records_before
    assert salesforce.records("Sales_Transaction__c") == []
    writes = [s for r in salesforce.requests for s in r.subrequests if s["method"] != "GET"]
    assert writes == [] and all(r.method in ("GET", "POST") for r in salesforce.requests)
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] is None


def test_dry_run_after_a_sync_says_update_or_unchanged(cli, lightspeed, salesforce, boutique):
    same, changed = sell(lightspeed, boutique), sell(lightspeed, boutique)
    assert cli("sync").code == 0
    lightspeed.void_sale(changed)

    result = cli("dry-run", "--from", ago(1).isoformat(), "--json")

    actions = {p["sale_id"]: p["action"] for p in result.json["plans"]}
    assert actions == {same: "unchanged", changed: "update"}


def test_dry_run_previews_a_voided_sale_once(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique, at=datetime.now(timezone.utc) - timedelta(minutes=5))
    assert cli("sync").code == 0
    lightspeed.void_sale(sale)

    preview = cli("dry-run", "--json")

    assert preview.code == 0, preview.stderr
    # observed: two plans for sale 1 (SaleVoid feed, then the page) and "2 would write" for one sale
    assert [p["sale_id"] for p in preview.json["plans"]] == [sale]
    assert preview.json["sales"]["written"] == 1


def test_dry_run_previews_a_client_matching_the_account_an_earlier_batch_creates_as_the_sync_links_it(
        cli, lightspeed, salesforce, boutique):
    # a couple sharing one email, both new to the CRM; their sales fall in two batches of the window
    ana = lightspeed.add_customer("Ana", "Lima", email="family@example.com")
    bo = lightspeed.add_customer("Bo", "Lima", email="family@example.com")
    sales = [sell(lightspeed, boutique, ana), sell(lightspeed, boutique, bo)]
    one_a_batch = {"engine.BATCH_SALES": 1}

    preview = cli("dry-run", "--json", constants=one_a_batch)
    assert cli("sync", constants=one_a_batch).code == 0

    written = {t["LS_Sale_ID__c"]: t for t in salesforce.records("Sales_Transaction__c")}
    # the sync creates Ana's account, and the next batch's lookup finds it by Bo's email
    assert [written[f"182255-{s}"]["Match_Status__c"] for s in sales] == ["Created", "Email"]
    plans = {p["sale_id"]: p for p in preview.json["plans"]}
    # observed: the preview says Bo's account would be created too ("Created", a second Person Account)
    assert [plans[s]["match"] for s in sales] == ["Created", "Email"]


def test_dry_run_previews_a_client_matching_the_account_the_void_feed_creates_as_the_sync_links_it(
        cli, lightspeed, salesforce, boutique):
    typed = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                          "LastName": "Lima", "Phone": "415-555-0100"})
    ana = lightspeed.add_customer("Ana", "Lima", email="family@example.com")
    bo = lightspeed.add_customer("Bo", "Lima", email="family@example.com", phones={"Home": "415-555-0100"})
    voided = sell(lightspeed, boutique, ana, at=datetime.now(timezone.utc) - timedelta(minutes=9))
    lightspeed.void_sale(voided)  # written from the SaleVoid feed, before the window's pages
    sale = sell(lightspeed, boutique, bo)

    preview = cli("dry-run", "--json")
    assert cli("sync").code == 0

    written = {t["LS_Sale_ID__c"]: t for t in salesforce.records("Sales_Transaction__c")}[f"182255-{sale}"]
    anas = next(a["Id"] for a in salesforce.records("Account") if a.get("LS_Customer_ID__c") == f"182255-{ana}")
    assert (written["Match_Status__c"], written["Account__c"]) == ("Email", anas)  # email before phone
    assert salesforce.get("Account", typed)["LS_Customer_ID__c"] is None
    plan = next(p for p in preview.json["plans"] if p["sale_id"] == sale)
    # observed: ("Phone", typed): the preview links Bo to the CRM account by phone and would stamp his key on it
    assert (plan["match"], plan["account_id"]) == ("Email", None)


def test_dry_run_previews_a_client_matching_an_account_by_the_email_an_earlier_batch_fills_as_the_sync_links_it(
        cli, lightspeed, salesforce, boutique):
    typed = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                          "LastName": "Lima", "Phone": "415-555-0100"})
    # Ana matches the CRM's account by phone: the sync keys it to her and fills its email; Bo has only that email
    ana = lightspeed.add_customer("Ana", "Lima", email="family@example.com", phones={"Home": "415-555-0100"})
    bo = lightspeed.add_customer("Bo", "Lima", email="family@example.com")
    sales = [sell(lightspeed, boutique, ana), sell(lightspeed, boutique, bo)]
    one_a_batch, enrich = {"engine.BATCH_SALES": 1}, {"LSPOS_ENRICH_PROFILES": "true"}

    preview = cli("dry-run", "--json", env=enrich, constants=one_a_batch)
    synced = cli("sync", "--json", env=enrich, constants=one_a_batch)

    written = {t["LS_Sale_ID__c"]: t for t in salesforce.records("Sales_Transaction__c")}
    assert [(written[f"182255-{s}"]["Match_Status__c"], written[f"182255-{s}"]["Account__c"]) for s in sales] == \
        [("Phone", typed), ("Email", typed)]
    plans = {p["sale_id"]: p for p in preview.json["plans"]}
    assert [(plans[s]["match"], plans[s]["account_id"]) for s in sales] == [("Phone", typed), ("Email", typed)]
    assert preview.json["records"] == synced.json["records"]


def test_dry_run_to_before_where_the_next_sync_starts_is_a_usage_error(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    assert cli("sync").code == 0  # the next sync starts at the checkpoint less the look-back

    result = cli("dry-run", "--to", ago(3).isoformat(), "--json")

    assert result.code == 2, result.stderr
    assert json.loads(result.stdout)["outcome"] == "failed"
    assert "--to" in json.loads(result.stdout)["error"] and "give --from as well" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["dry-run", "backfill"])
def test_from_after_lightspeeds_now_is_a_usage_error(cli, lightspeed, salesforce, boutique, command):
    sell(lightspeed, boutique)
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)

    alone = cli(command, "--from", tomorrow.isoformat(), "--json")
    both = cli(command, "--from", tomorrow.isoformat(), "--to", (tomorrow + timedelta(days=1)).isoformat())

    assert alone.code == 2, alone.stdout
    assert "is after Lightspeed's now" in json.loads(alone.stdout)["error"]
    assert both.code == 2 and "give --from as well" not in both.stderr, both.stderr
    assert salesforce.records("Sales_Transaction__c") == []
    # the host's now is not refused (Lightspeed's clock, whole seconds, may read a second earlier)
    assert cli(command, "--from", datetime.now(timezone.utc).isoformat()).code == 0


def test_dry_run_limit_caps_the_preview(cli, lightspeed, salesforce, boutique):
    for _ in range(5):
        sell(lightspeed, boutique)
    result = cli("dry-run", "--limit", "2", "--json")
    assert result.code == 0 and len(result.json["plans"]) == 2


def test_dry_run_plain_output_has_a_line_per_sale(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique)
    result = cli("dry-run")
    assert result.code == 0
    assert f"sale {sale} (182255-{sale}) create: Completed total 120.00, 1 line(s), customer Guest" in result.stdout


def test_checkpoint_reset_without_terminal_needs_yes(cli):
    result = cli("checkpoint", "reset", "--to", "2026-03-01")
    assert result.code == 2 and "--yes" in result.stderr


def test_checkpoint_reset_sets_and_clears_and_show_reports(cli):
    assert cli("checkpoint", "reset", "--to", "2026-03-01T09:30:00+01:00", "--yes").code == 0
    shown = cli("checkpoint", "show", "--json")
    assert shown.code == 0
    assert shown.json["checkpoints"]["182255"]["cursor"] == "2026-03-01T08:30:00+00:00"
    assert cli("checkpoint", "reset", "--yes").code == 0
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] is None


def test_checkpoint_show_reports_the_last_run(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    assert cli("sync").code == 0
    shown = cli("checkpoint", "show", "--json").json
    assert shown["last_run"]["command"] == "sync" and shown["last_run"]["outcome"] == "ok"
    assert shown["checkpoints"]["182255"]["lag_minutes"] == 0
    assert "last run: sync" in cli("checkpoint", "show").stdout


@pytest.mark.parametrize("args", [
    ("backfill", "--from", "yesterday"),
    ("backfill", "--from", "2026-03-05", "--to", "2026-03-01"),
    ("dry-run", "--from", "2026-13-01"),
    ("checkpoint", "reset", "--to", "soon", "--yes"),
    ("sync", "--bogus"),
    ("backfill",),
])
def test_bad_usage_exits_2_with_one_line(cli, args):
    result = cli(*args)
    assert result.code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr


def test_no_command_at_all_shows_the_help_and_exits_2(cli):
    result = cli()
    assert result.code == 2
    assert "Commands:" in result.stderr and "sync" in result.stderr


def test_missing_configuration_exits_2_naming_the_variable(cli):
    result = cli("sync", env={"LIGHTSPEED_CLIENT_ID": ""})
    assert result.code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("Error: missing configuration: LIGHTSPEED_CLIENT_ID")


@pytest.mark.parametrize("region", ["UK", "XX"])
def test_a_phone_region_no_numbering_plan_has_is_a_configuration_error(cli, region):
    # "UK" for GB reads no number written without a country code: every such customer would be created anew.
    result = cli("sync", env={"LSPOS_PHONE_REGION": region})
    assert result.code == 2, (result.code, result.stderr)
    assert "LSPOS_PHONE_REGION" in result.stderr


def test_env_file_fills_in_what_the_environment_lacks(cli, tmp_path, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    env_file = tmp_path / "lspos.env"
    env_file.write_text(f"LIGHTSPEED_CLIENT_ID={lightspeed.env()['LIGHTSPEED_CLIENT_ID']}\nLIGHTSPEED_ACCOUNT_ID=999\n")
    result = cli("sync", "--env-file", str(env_file), "--json", env={"LIGHTSPEED_CLIENT_ID": ""})
    assert result.code == 0, result.stderr
    assert result.json["account_id"] == "182255"  # the environment wins over the file


def test_an_env_file_that_cannot_be_read_is_a_configuration_error_exit_2(tmp_path):
    """Exit code 2: "usage or configuration error"; §2: "a .env file fills in what the environment lacks".
    A .env that is not UTF-8 (a password with an accented letter saved as Latin-1) is exit 2 naming the file,
    not a failed run."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    env_file = workdir / "lspos.env"
    env_file.write_bytes(b"LIGHTSPEED_ACCOUNT_ID=182255\nSALESFORCE_PASSWORD=caf\xe9\n")
    cli = Cli({"LSPOS_STATE_PATH": str(tmp_path / "state.db")}, workdir)
    result = cli("checkpoint", "show", "--json", "--env-file", str(env_file))
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert result.json["exit_code"] == 2
    assert "lspos.env" in result.json["error"]


def test_json_stdout_is_exactly_one_object_even_on_failure(cli):
    result = cli("sync", "--json", env={"SALESFORCE_ACCESS_TOKEN": "", "SALESFORCE_INSTANCE_URL": ""})
    assert result.code == 2
    assert json.loads(result.stdout)["outcome"] == "failed"


def test_state_option_overrides_the_variable(cli, tmp_path):
    other = tmp_path / "other.db"
    assert cli("checkpoint", "reset", "--to", "2026-03-01", "--yes", "--state", str(other)).code == 0
    assert other.exists()
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] is None


def test_python_m_and_console_script_are_the_same_program(cli):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("lspos-sync", path=str(Path(sys.executable).parent))
    assert script is not None
    assert "checkpoint" in subprocess.run([script, "--help"], capture_output=True, text=True).stdout
    # The script goes through `run` too: a usage error with --json is one JSON object and exit 2, as with -m.
    through_script = subprocess.run([script, "sync", "--json", "--bogus"], capture_output=True, text=True,
                                    env=cli._environment(None), cwd=cli.cwd)
    through_module = cli("sync", "--json", "--bogus")
    assert through_script.returncode == through_module.code == 2
    assert json.loads(through_script.stdout) == json.loads(through_module.stdout)
    # Both name themselves `lspos-sync`, in --version, --help and every usage error.
    for args in (("--version",), ("--help",), ("sync", "--bogus")):
        through_script = subprocess.run([script, *args], capture_output=True, text=True,
                                        env=cli._environment(None), cwd=cli.cwd)
        through_module = cli(*args)
        assert (through_module.code, through_module.stdout, through_module.stderr) == \
            (through_script.returncode, through_script.stdout, through_script.stderr)
    assert through_module.stderr.endswith("See 'lspos-sync sync --help'.\n"), through_module.stderr


def test_dry_run_from_previews_the_restore_of_a_sale_deleted_in_salesforce_as_backfill_does_it(
        cli, lightspeed, salesforce, boutique):
    """dry-run --from previews a window as `backfill` over it writes it (docs/cli.md): a sale deleted in Salesforce
    by hand, unchanged in Lightspeed, is restored by the backfill, so the preview says create, not unchanged."""
    sale = sell(lightspeed, boutique, at=ago(2))
    assert cli("backfill", "--from", ago(3).isoformat()).code == 0
    [record] = salesforce.records("Sales_Transaction__c")
    delete_by_hand(salesforce, "Sales_Transaction__c", record["Id"])

    preview = cli("dry-run", "--from", ago(3).isoformat(), "--json")

    assert preview.code == 0, preview.stderr
    assert [(p["sale_id"], p["action"]) for p in preview.json["plans"]] == [(sale, "create")]
    assert salesforce.records("Sales_Transaction__c") == []  # nothing written
    assert cli("backfill", "--from", ago(3).isoformat(), "--json").json["sales"]["written"] == 1


def test_backfill_restores_a_sale_deleted_in_salesforce(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique, at=ago(2))
    assert cli("backfill", "--from", ago(3).isoformat()).code == 0
    [record] = salesforce.records("Sales_Transaction__c")
    delete_by_hand(salesforce, "Sales_Transaction__c", record["Id"])  # its lines went with it

    again = cli("backfill", "--from", ago(3).isoformat(), "--json")

    assert again.code == 0 and again.json["sales"]["written"] == 1
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]
    assert len(salesforce.records("Sales_Line_Item__c")) == 1


def test_missing_refresh_token_is_a_configuration_error(cli):
    result = cli("sync", env={"LIGHTSPEED_REFRESH_TOKEN": ""})
    assert result.code == 2 and "LIGHTSPEED_REFRESH_TOKEN" in result.stderr


def test_checkpoint_set_ahead_of_the_clock_is_kept_with_a_warning_and_the_next_sync_reads_from_now(
        cli, lightspeed, salesforce, boutique):
    ahead = datetime.now(timezone.utc) + timedelta(hours=2)
    result = cli("checkpoint", "reset", "--to", ahead.isoformat(), "--yes", "--json")
    assert result.code == 0, result.stderr
    assert "later than this host's clock" in result.stderr
    assert datetime.fromisoformat(cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"]) == ahead
    sale = sell(lightspeed, boutique)

    synced = cli("sync", "--json", env={"LSPOS_LOOKBACK_MINUTES": "5"})

    assert synced.code == 0, synced.stderr
    assert f"182255-{sale}" in {r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")}
    assert datetime.fromisoformat(synced.json["checkpoint"]) < ahead  # set back to where it read up to


@pytest.mark.parametrize("args", [("sync", "--json", "--bogus"), ("backfill", "--json"),
                                  ("dry-run", "--limit", "0", "--json")])
def test_usage_errors_with_json_still_print_one_object(cli, args):
    result = cli(*args)
    assert result.code == 2
    assert json.loads(result.stdout)["outcome"] == "failed"


def test_dry_run_limit_reads_no_more_pages_than_it_needs(cli, lightspeed, salesforce, boutique):
    for _ in range(1000):
        sell(lightspeed, boutique)
    result = cli("dry-run", "--limit", "3", "--json")
    assert result.code == 0 and len(result.json["plans"]) == 3
    assert lightspeed.request_count("Sale.json") <= 6  # the first page and the few read ahead, not all ten
