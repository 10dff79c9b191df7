"""Contract statements no other test pins, each checked as the acceptance suite does: the real program against
both emulators, as cron or a person at a terminal runs it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote_plus

import pytest

from conftest import Cli, by_key, query_subrequests, sell, soql_of
from lspos_sync.config import load_settings


def on_a_terminal(cli: Cli, *args: str, answer: bytes | None = None) -> tuple[int, str]:
    """The program with stdin, stdout and stderr on one pseudo-terminal, as a person at a shell runs it; `answer` is
    typed once the program asks its question. Its exit code, and everything it showed."""
    leader, follower = pty.openpty()
    env = cli._environment({"TERM": "xterm-256color", "COLUMNS": "200"})
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "lspos_sync", *args], env=env, cwd=cli.cwd,
                               stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the program closed its end
                break
            if not chunk:
                break
            shown += chunk
            if answer is not None and b"?" in shown:
                os.write(leader, answer)
                answer = None
        elif process.poll() is not None:
            break
    process.wait(timeout=30)
    os.close(leader)
    return process.returncode, shown.decode(errors="replace").replace("\r", "")


# §2: "Read from the environment; a `.env` file fills in what the environment lacks." §1: "--env-file PATH
# (default: `.env` in the working directory when it exists)".

def test_a_dot_env_in_the_working_directory_fills_in_what_the_environment_lacks(cli, lightspeed, salesforce,
                                                                                 boutique):
    sale = sell(lightspeed, boutique)
    (cli.cwd / ".env").write_text(f"LIGHTSPEED_CLIENT_SECRET={lightspeed.env()['LIGHTSPEED_CLIENT_SECRET']}\n"
                                  "LIGHTSPEED_ACCOUNT_ID=999\n")

    result = cli("sync", "--json", env={"LIGHTSPEED_CLIENT_SECRET": ""})

    assert result.code == 0, result.stderr
    assert result.json["account_id"] == "182255"  # the environment wins over the file
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]


def test_an_env_file_given_is_read_instead_of_the_dot_env_of_the_working_directory(cli, tmp_path):
    (cli.cwd / ".env").write_text("LSPOS_LOOKBACK_MINUTES=not a number\n")
    given = tmp_path / "lspos.env"
    given.write_text("LSPOS_LOOKBACK_MINUTES=10\n")

    assert cli("checkpoint", "show").code == 2  # the working directory's .env is read by default
    assert cli("checkpoint", "show", "--env-file", str(given)).code == 0


# §1: "WHEN is ISO 8601: `2026-03-01`, `2026-03-01T09:30:00`, `2026-03-01T09:30:00+01:00`, `...Z`. A value without
# an offset is UTC."

@pytest.mark.parametrize("when, moment", [
    ("2026-03-01", "2026-03-01T00:00:00+00:00"),
    ("2026-03-01T09:30:00", "2026-03-01T09:30:00+00:00"),
    ("2026-03-01T09:30:00+01:00", "2026-03-01T08:30:00+00:00"),
    ("2026-03-01T09:30:00Z", "2026-03-01T09:30:00+00:00"),
])
def test_when_takes_each_iso_8601_form_and_a_value_without_an_offset_is_utc(cli, when, moment):
    assert cli("checkpoint", "reset", "--to", when, "--yes").code == 0
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] == moment


@pytest.mark.parametrize("form", ["date", "naive", "offset", "Z"])
def test_backfill_window_takes_each_iso_8601_form(cli, lightspeed, salesforce, boutique, form):
    start = (datetime.now(timezone.utc) - timedelta(days=2)).replace(microsecond=0)
    when = {"date": start.date().isoformat(), "naive": start.replace(tzinfo=None).isoformat(),
            "offset": start.astimezone(timezone(timedelta(hours=1))).isoformat(),
            "Z": start.replace(tzinfo=None).isoformat() + "Z"}[form]
    expected = datetime.combine(start.date(), datetime.min.time(), timezone.utc) if form == "date" else start

    result = cli("backfill", "--from", when, "--json")

    assert result.code == 0, result.stderr
    assert datetime.fromisoformat(result.json["window"]["from"]) == expected


# §1: "`checkpoint reset` ... Asks for confirmation on a terminal".

def test_checkpoint_reset_on_a_terminal_asks_first_and_resets_only_when_confirmed(cli):
    declined, shown = on_a_terminal(cli, "checkpoint", "reset", "--to", "2026-03-01", answer=b"n\n")

    assert "Set the checkpoint of account 182255 to 2026-03-01T00:00:00+00:00?" in shown
    assert declined != 0
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] is None

    confirmed, shown = on_a_terminal(cli, "checkpoint", "reset", "--to", "2026-03-01", answer=b"y\n")

    assert confirmed == 0, shown
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] == "2026-03-01T00:00:00+00:00"


# §1: "Progress bars and tables (rich) appear only when stderr is a terminal"; dry-run "prints per sale what would
# happen (match and why, create or update, lines, totals)".

def test_dry_run_on_a_terminal_shows_a_table_of_what_would_happen_to_each_sale(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique, lines=((1, "10"), (2, "5")))

    code, shown = on_a_terminal(cli, "dry-run")

    assert code == 0, shown
    header = next(line for line in shown.splitlines() if "ticket" in line)
    assert [column in header for column in ("sale", "action", "status", "total", "lines", "customer", "why")] \
        == [True] * 7
    row = next(line for line in shown.splitlines() if f" {sale} " in line and "create" in line)
    assert "20.00" in row and "Guest" in row and "no customer on the sale" in row
    assert "dry-run account 182255" in shown  # and the summary line


# §2: "`LSPOS_LOOKBACK_MINUTES` | overlap re-read on every run, default 30".

def test_a_sync_rereads_thirty_minutes_before_the_checkpoint_by_default(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    first = cli("sync", "--json")
    assert first.code == 0, first.stderr

    again = cli("sync", "--json")

    assert again.code == 0, again.stderr
    checkpoint = datetime.fromisoformat(first.json["checkpoint"])
    start = datetime.fromisoformat(again.json["window"]["from"])
    # a run in the same second reads from Lightspeed's now where that is earlier (Date has whole seconds)
    assert checkpoint - timedelta(minutes=30, seconds=1) <= start <= checkpoint - timedelta(minutes=30)


# §4 "Customers": phone "against `PersonMobilePhone`, `Phone` and `PersonHomePhone`".

def test_a_customer_is_matched_by_the_home_phone_the_crm_holds(cli, lightspeed, salesforce, boutique):
    typed = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                          "LastName": "Chen", "PersonHomePhone": "(415) 555-0134"})
    bo = lightspeed.add_customer("Bo", "Chen", phones={"Work": "+1 415 555 0134"})
    sale = sell(lightspeed, boutique, bo)

    assert cli("sync").code == 0

    written = by_key(salesforce.records("Sales_Transaction__c"), "LS_Sale_ID__c")[f"182255-{sale}"]
    assert (written["Match_Status__c"], written["Account__c"]) == ("Phone", typed)
    assert salesforce.get("Account", typed)["LS_Customer_ID__c"] == f"182255-{bo}"


# §4 "Customers": "the sale is written with `Match_Status__c = Ambiguous` and no account, and the run output lists
# it"; §1: "quiet on success except for one summary line".

def test_an_ambiguous_sale_is_listed_by_a_plain_sync_beside_its_one_summary_line(cli, lightspeed, salesforce,
                                                                                   boutique):
    for last in ("Lima", "Lima-Souza"):
        salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id, "LastName": last,
                                      "PersonEmail": "family@example.com"})
    sale = sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="family@example.com"))

    result = cli("sync")

    assert result.code == 0, result.stderr
    [summary] = result.stdout.splitlines()
    assert "1 ambiguous" in summary
    assert [line for line in result.stderr.splitlines() if f"182255-{sale}" in line] == \
        [line for line in result.stderr.splitlines() if line.startswith(f"ambiguous 182255-{sale}:")]
    assert len(result.stderr.splitlines()) == 1


# §3 Account: "`RecordTypeId` | the Person Account record type (looked up once per run)".

def test_the_person_account_record_type_is_looked_up_once_a_run(cli, lightspeed, salesforce, boutique):
    for i in range(5):
        sell(lightspeed, boutique, lightspeed.add_customer(f"C{i}", "New", email=f"c{i}@example.com"))

    result = cli("sync", "--json", constants={"engine.BATCH_SALES": 2})  # three batches, each creating accounts

    assert result.code == 0, result.stderr
    created = [a for a in salesforce.records("Account") if a.get("LS_Customer_ID__c")]
    assert len(created) == 5
    assert {a["RecordTypeId"] for a in created} == {salesforce.person_account_record_type_id}
    in_composite = [s for s in query_subrequests(salesforce) if "FROM RecordType" in soql_of(s)]
    alone = [r for r in salesforce.requests if "/query" in r.path and "RecordType" in unquote_plus(r.path)]
    assert len(in_composite) + len(alone) == 1


# §2: the defaults of the variables left unset.

def test_variables_left_unset_take_the_contract_defaults():
    settings = load_settings({"LIGHTSPEED_ACCOUNT_ID": "182255"})

    assert (settings.lightspeed_api_url, settings.lightspeed_token_url) == \
        ("https://api.lightspeedapp.com/API/V3", "https://cloud.lightspeedapp.com/auth/oauth/token")
    assert (settings.salesforce.domain, settings.salesforce.api_version) == ("login", "62.0")
    assert settings.lookback == timedelta(minutes=30)
    assert settings.bulk_threshold == 20000
    assert settings.phone_region == "US"
    assert settings.person_account_record_type == "PersonAccount"
    assert settings.sync_start is None


def test_salesforce_is_called_at_api_version_62_when_the_variable_is_unset(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)

    assert cli("sync", env={"SALESFORCE_API_VERSION": ""}).code == 0

    assert salesforce.requests and all("/v62.0/" in r.path for r in salesforce.requests if "/services/data/" in r.path)


@pytest.mark.parametrize("xdg", [True, False], ids=["XDG_DATA_HOME", "home"])
def test_the_state_file_is_in_the_users_data_directory_by_default(cli, tmp_path, xdg):
    home = tmp_path / "home"
    env = {"LSPOS_STATE_PATH": "", "HOME": str(home), "XDG_DATA_HOME": str(tmp_path / "data") if xdg else ""}

    assert cli("checkpoint", "reset", "--to", "2026-03-01", "--yes", env=env).code == 0

    expected = (tmp_path / "data" if xdg else home / ".local" / "share") / "lspos-sync" / "state.db"
    assert expected.is_file()
    assert cli("checkpoint", "show", "--json", env=env).json["checkpoints"]["182255"]["cursor"] == \
        "2026-03-01T00:00:00+00:00"


# §1 dry-run: "Writes nothing to Salesforce and nothing to the checkpoint": nor to what the state store keeps of the
# runs and of the parked sales.

def test_dry_run_leaves_the_parked_sales_and_the_run_history_as_they_were(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique, lines=((1, "999.00"),))
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: (r.get("Total__c") or 0) > 500,
                                   "Totals over 500 need approval")
    assert cli("sync").code == 3
    parked, history = cli("rejects", "list", "--json").json, cli("status", "--json").json
    shown = cli("checkpoint", "show", "--json").json

    preview = cli("dry-run", "--json")

    assert preview.code == 0, preview.stderr
    assert cli("rejects", "list", "--json").json == parked
    assert cli("status", "--json").json["runs"] == history["runs"]
    again = cli("checkpoint", "show", "--json").json
    assert (again["checkpoints"]["182255"]["cursor"], again["last_run"]) == \
        (shown["checkpoints"]["182255"]["cursor"], shown["last_run"])


# Exit 2: "usage or configuration error". A URL variable that is no URL (a scheme left out, a host missing) is a
# configuration error, found before anything is asked of either API, not a failed run after a minute of retries.

@pytest.mark.parametrize("variable, value", [
    ("SALESFORCE_INSTANCE_URL", "acme.my.salesforce.com"),
    ("SALESFORCE_INSTANCE_URL", "https://"),
    ("LIGHTSPEED_API_URL", "api.lightspeedapp.com/API/V3"),
    ("LIGHTSPEED_TOKEN_URL", "cloud.lightspeedapp.com/auth/oauth/token"),
])
def test_a_url_variable_that_is_no_url_is_a_configuration_error_exit_2(cli, lightspeed, salesforce, boutique, tmp_path,
                                                                      variable, value):
    sell(lightspeed, boutique)

    result = cli("sync", "--state", str(tmp_path / "fresh.db"), env={variable: value})

    assert result.code == 2, (result.code, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {variable}: ") and value in line
    assert lightspeed.request_count("Account/182255.json") == 0 and salesforce.requests == []


# §2: "`SALESFORCE_DOMAIN` | `login` (default) or `test` for sandboxes". Logins go to https://<domain>.salesforce.com:
# a URL or a full host name there is a configuration error (exit 2), not a login failing against a host that cannot be.

@pytest.mark.parametrize("domain", ["https://test.salesforce.com", "test.salesforce.com", "login/"])
def test_a_salesforce_domain_that_is_no_login_domain_is_a_configuration_error_exit_2(cli, lightspeed, salesforce,
                                                                                    boutique, domain):
    sell(lightspeed, boutique)
    password_login = {"SALESFORCE_INSTANCE_URL": "", "SALESFORCE_ACCESS_TOKEN": "", "SALESFORCE_DOMAIN": domain,
                      "SALESFORCE_USERNAME": "sync@example.com", "SALESFORCE_PASSWORD": "s3cret-pass"}

    result = cli("sync", env=password_login)

    assert result.code == 2, (result.code, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: SALESFORCE_DOMAIN: ") and domain in line and "test" in line


@pytest.mark.parametrize("domain", ["login", "test", "acme.my"])
def test_a_login_domain_is_taken_as_given(domain):
    assert load_settings({"SALESFORCE_DOMAIN": domain}).salesforce.domain == domain


# §2 LSPOS_SYNC_START: "where the first `sync` starts when there is no checkpoint". One after Lightspeed's now (2062 for
# 2026) starts nothing: exit 2 naming it, as `backfill --from` after Lightspeed's now is, and no checkpoint set (the
# sync read an empty window and set the checkpoint to now: every sale since the start meant was never read).

@pytest.mark.parametrize("command", ["sync", "dry-run"])
def test_a_sync_start_after_lightspeeds_now_is_a_configuration_error_and_sets_no_checkpoint(
        cli, lightspeed, salesforce, boutique, command):
    sell(lightspeed, boutique)

    result = cli(command, "--json", env={"LSPOS_SYNC_START": "2062-03-01"})

    assert result.code == 2, (result.code, result.stdout)
    assert "LSPOS_SYNC_START" in result.json["error"] and "after Lightspeed's now" in result.json["error"]
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] is None
    assert salesforce.records("Sales_Transaction__c") == []
