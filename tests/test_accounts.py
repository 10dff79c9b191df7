"""Several Lightspeed accounts into one org (issue 6.4, LIGHTSPEED_ACCOUNTS): each with its own rotating tokens,
checkpoint and lock, run in turn or picked with --account; the real program against both emulators."""

from __future__ import annotations

import fcntl
import os
from datetime import datetime, timezone

import pytest

from conftest import Boutique, by_key, sell
from lspos_sync.config import fingerprint
from lspos_sync.state import StateStore

SECOND = "190001"


def open_boutique(account) -> Boutique:
    shop = account.add_shop("Avenue Montaigne", "Europe/Paris")
    scarf = account.add_item("Cashmere stole", custom_sku="STOLE-01", category_id=account.add_category("Knitwear"))
    bag = account.add_item("Clutch", category_id=account.add_category("Leather goods"))
    return Boutique(shop, scarf, bag, account.add_payment_type("Amex"), account.add_payment_type("Cash", type="cash"))


@pytest.fixture
def second(lightspeed):
    return lightspeed.add_account(SECOND, refresh_token="ls-refresh-montaigne-0")


@pytest.fixture
def several(lightspeed, second) -> dict[str, str]:
    """The operator's configuration: both accounts, one shared client, a refresh token each."""
    return {**lightspeed.accounts_env(), "LIGHTSPEED_ACCOUNT_ID": ""}


def test_two_accounts_sync_into_one_org_with_their_own_keys_checkpoints_and_tokens(
        cli, lightspeed, salesforce, boutique, second, several):
    ana_first = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    ana_second = second.add_customer("Ana", "Lima", email="ANA@example.com")
    first_sale = sell(lightspeed, boutique, ana_first)
    second_sale = sell(second, open_boutique(second), ana_second, lines=((1, "300.00"),))
    assert first_sale == second_sale == 1  # each account numbers its own sales

    result = cli("sync", "--json", env=several)

    assert result.code == 0, result.stderr
    assert [a["account_id"] for a in result.json["accounts"]] == ["182255", SECOND]
    assert all(a["sales"]["written"] == 1 for a in result.json["accounts"])
    written = by_key(salesforce.records("Sales_Transaction__c"), "LS_Sale_ID__c")
    assert set(written) == {"182255-1", f"{SECOND}-1"}
    [account] = [a for a in salesforce.records("Account") if a.get("IsPersonAccount")]
    assert account["LS_Customer_ID__c"] == f"182255-{ana_first}"  # created by the first account
    assert written[f"{SECOND}-1"]["Account__c"] == account["Id"]  # found by email from the second
    assert written[f"{SECOND}-1"]["Match_Status__c"] == "Email"
    assert "sync account 182255" in cli("sync", env=several).stdout

    checkpoints = cli("checkpoint", "show", "--json", env=several).json["checkpoints"]
    assert set(checkpoints) == {"182255", SECOND} and all(c["cursor"] for c in checkpoints.values())
    # each chain rotated on its own and lives in the store: the variables' first tokens are long spent
    assert lightspeed.refresh_count >= 1 and second.refresh_count >= 1
    assert lightspeed.current_refresh_token != lightspeed.initial_refresh_token
    assert second.current_refresh_token != "ls-refresh-montaigne-0"
    assert cli("sync", env=several).code == 0


def test_two_accounts_with_the_same_sale_line_and_customer_ids_write_separate_records(
        cli, lightspeed, salesforce, boutique, second, several):
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    bo = second.add_customer("Bo", "Moreau", email="bo@example.com")
    sell(lightspeed, boutique, ana, lines=((1, "10.00"), (2, "20.00")))
    sell(second, open_boutique(second), bo, lines=((1, "30.00"), (1, "40.00")))
    assert ana == bo  # each account numbers its own customers, sales and lines from 1

    assert cli("sync", env=several).code == 0

    lines = by_key(salesforce.records("Sales_Line_Item__c"), "LS_Sale_Line_ID__c")
    transactions = by_key(salesforce.records("Sales_Transaction__c"), "LS_Sale_ID__c")
    assert set(lines) == {"182255-1", "182255-2", f"{SECOND}-1", f"{SECOND}-2"}
    assert lines[f"{SECOND}-1"]["Sales_Transaction__c"] == transactions[f"{SECOND}-1"]["Id"]
    people = by_key(salesforce.records("Account"), "LS_Customer_ID__c")
    assert set(people) == {f"182255-{ana}", f"{SECOND}-{bo}"}
    assert transactions[f"{SECOND}-1"]["Account__c"] == people[f"{SECOND}-{bo}"]["Id"]


def test_a_void_and_a_removed_line_in_one_account_leave_the_other_accounts_records_alone(
        cli, lightspeed, salesforce, boutique, second, several):
    first_sale = sell(lightspeed, boutique, lines=((1, "10.00"), (2, "20.00")))
    second_sale = sell(second, open_boutique(second), lines=((1, "30.00"), (1, "40.00")))
    assert cli("sync", env=several).code == 0
    second.void_sale(second_sale)
    lightspeed.remove_line(first_sale, 1)  # the same saleLineID as the second account's first line

    assert cli("sync", env=several).code == 0

    transactions = by_key(salesforce.records("Sales_Transaction__c"), "LS_Sale_ID__c")
    assert transactions[f"{SECOND}-{second_sale}"]["Status__c"] == "Voided"
    assert transactions[f"182255-{first_sale}"]["Status__c"] == "Completed"
    assert {line["LS_Sale_Line_ID__c"] for line in salesforce.records("Sales_Line_Item__c")} == {
        "182255-2", f"{SECOND}-1", f"{SECOND}-2"}  # the voided sale keeps its lines


def test_a_client_of_both_accounts_has_one_person_account_whose_roll_ups_sum_both_and_whose_profile_is_its_own(
        cli, lightspeed, salesforce, boutique, second, several):
    env = {**several, "LSPOS_ENRICH_PROFILES": "true", "LSPOS_ROLLUPS": "true"}
    ana_first = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    ana_second = second.add_customer("Ana", "Lima", email="Ana@Example.com", phones={"Mobile": "415-555-0199"},
                                     dob=datetime(1981, 4, 9, 4, tzinfo=timezone.utc))
    montaigne = open_boutique(second)
    sell(lightspeed, boutique, ana_first, lines=((1, "100.00"),))
    assert cli("sync", "--account", "182255", env=env).code == 0
    sell(second, montaigne, ana_second, lines=((1, "50.00"),))
    assert cli("sync", "--account", SECOND, env=env).code == 0
    sell(lightspeed, boutique, ana_first, lines=((1, "7.00"),))
    sell(second, montaigne, ana_second, lines=((1, "3.00"),))

    # each account's sync on its own, as two cron entries run them
    assert cli("sync", "--account", SECOND, env=env).code == 0
    assert cli("sync", "--account", "182255", env=env).code == 0

    [ana] = salesforce.records("Account")
    assert ana["LS_Customer_ID__c"] == f"182255-{ana_first}"  # the first account created it; never re-keyed
    statuses = {t["LS_Sale_ID__c"]: (t["Match_Status__c"], t["Account__c"])
                for t in salesforce.records("Sales_Transaction__c")}
    assert statuses == {"182255-1": ("Created", ana["Id"]), "182255-2": ("Linked", ana["Id"]),
                        f"{SECOND}-1": ("Email", ana["Id"]), f"{SECOND}-2": ("Email", ana["Id"])}
    assert (ana["Lifetime_Spend__c"], ana["Purchase_Count__c"]) == (160.0, 4)
    # filled only from the customer whose key it carries: the other account's client fills nothing
    assert ana["PersonMobilePhone"] is None and ana["PersonBirthdate"] is None


def test_account_option_runs_only_that_account(cli, lightspeed, salesforce, boutique, second, several):
    sell(lightspeed, boutique)
    sell(second, open_boutique(second))

    result = cli("sync", "--account", SECOND, "--json", env=several)

    assert result.code == 0, result.stderr
    assert [a["account_id"] for a in result.json["accounts"]] == [SECOND]
    assert [t["LS_Sale_ID__c"] for t in salesforce.records("Sales_Transaction__c")] == [f"{SECOND}-1"]
    checkpoints = cli("checkpoint", "show", "--json", env=several).json["checkpoints"]
    assert checkpoints["182255"]["cursor"] is None and checkpoints[SECOND]["cursor"]
    assert lightspeed.request_count() == 0


def test_an_account_not_configured_exits_2(cli, several):
    result = cli("sync", "--account", "999999", env=several)

    assert result.code == 2 and "not one of LIGHTSPEED_ACCOUNTS" in result.stderr


@pytest.mark.parametrize("listed", ["182255;190001", "182255 190001", "abc,190001", "182255,-1"])
def test_a_malformed_accounts_list_exits_2_with_one_line(cli, several, listed):
    result = cli("sync", env={**several, "LIGHTSPEED_ACCOUNTS": listed})

    assert result.code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: LIGHTSPEED_ACCOUNTS: ")


def test_one_account_failing_does_not_stop_the_other(cli, lightspeed, salesforce, boutique, second, several):
    sell(lightspeed, boutique)
    sell(second, open_boutique(second))
    lightspeed.revoke_all_tokens()  # the first merchant revoked the app

    result = cli("sync", "--json", env=several)

    assert result.code == 1
    first, other = result.json["accounts"]
    assert (first["account_id"], first["outcome"], first["exit_code"]) == ("182255", "failed", 1)
    assert other["outcome"] == "ok" and other["sales"]["written"] == 1
    assert [t["LS_Sale_ID__c"] for t in salesforce.records("Sales_Transaction__c")] == [f"{SECOND}-1"]
    assert "account 182255: Error:" in result.stderr


def test_a_rejected_sale_is_parked_and_retried_by_its_own_account_only(cli, lightspeed, salesforce, boutique,
                                                                        second, several):
    sell(lightspeed, boutique)
    sell(second, open_boutique(second))
    salesforce.add_validation_rule("Sales_Transaction__c", lambda t: t.get("LS_Sale_ID__c") == "182255-1",
                                   "the period is closed")

    result = cli("sync", "--json", env=several)

    assert result.code == 3
    first, other = result.json["accounts"]
    assert (first["exit_code"], [r["sale_key"] for r in first["rejected"]]) == (3, ["182255-1"])
    assert (other["exit_code"], other["rejected"]) == (0, [])
    salesforce.clear_validation_rules()
    other = cli("sync", "--account", SECOND, "--json", env=several).json["accounts"][0]
    assert other["sales"]["retried"] == 0  # the first account's parked sale is not the second's to retry
    assert [r["sale_key"] for r in cli("rejects", "list", "--json", env=several).json["rejects"]] == ["182255-1"]
    first = cli("sync", "--account", "182255", "--json", env=several).json["accounts"][0]
    assert first["sales"]["retried"] == 1 and first["exit_code"] == 0
    assert cli("rejects", "list", "--json", env=several).json["rejects"] == []
    assert "182255-1" in {t["LS_Sale_ID__c"] for t in salesforce.records("Sales_Transaction__c")}


def test_reauthorising_one_account_starts_a_new_chain_for_it_alone(cli, lightspeed, salesforce, boutique, second,
                                                                  several, state_path):
    assert cli("sync", env=several).code == 0
    second.revoke_all_tokens()
    reauthorised = second.reauthorise()
    lightspeed.expire_access_tokens()  # the first account refreshes too, on its own stored chain
    sell(lightspeed, boutique)
    sell(second, open_boutique(second))

    result = cli("sync", "--json", env={**several, f"LIGHTSPEED_ACCOUNT_{SECOND}_REFRESH_TOKEN": reauthorised})

    assert result.code == 0, result.stderr
    assert all(a["sales"]["written"] == 1 for a in result.json["accounts"])
    assert f"Lightspeed account {SECOND} refused" in result.stderr and "account 182255 refused" not in result.stderr
    assert reauthorised not in result.stderr
    with StateStore(state_path) as store:
        assert store.tokens("182255").seed == fingerprint(lightspeed.initial_refresh_token)
        assert store.tokens(SECOND).seed == fingerprint(reauthorised)
    assert lightspeed.request_count("/auth/oauth/token", status=400) == 0
    assert second.request_count("/auth/oauth/token", status=400) == 1


def test_a_run_holding_one_account_makes_a_full_sync_exit_4_at_once_but_the_other_account_may_run(
        cli, lightspeed, salesforce, boutique, second, several, state_path):
    sell(lightspeed, boutique)
    sell(second, open_boutique(second))
    state_path.parent.mkdir(parents=True, exist_ok=True)
    holder = os.open(f"{state_path}.182255.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a run of the first account is under way
    try:
        everything = cli("sync", "--json", env=several)
        assert everything.code == 4 and "account 182255" in everything.json["error"]
        assert salesforce.records("Sales_Transaction__c") == []  # it did nothing

        other = cli("sync", "--account", SECOND, "--json", env=several)
    finally:
        os.close(holder)

    assert other.code == 0, other.stderr
    assert [t["LS_Sale_ID__c"] for t in salesforce.records("Sales_Transaction__c")] == [f"{SECOND}-1"]


def test_an_account_without_a_refresh_token_fails_alone_and_is_named(cli, lightspeed, salesforce, boutique, second,
                                                                     several):
    sell(lightspeed, boutique)
    sell(second, open_boutique(second))
    env = {**several, f"LIGHTSPEED_ACCOUNT_{SECOND}_REFRESH_TOKEN": "", "LIGHTSPEED_REFRESH_TOKEN": ""}

    result = cli("sync", "--json", env=env)

    assert result.code == 2
    first, other = result.json["accounts"]
    assert first["outcome"] == "ok" and first["sales"]["written"] == 1
    assert other["exit_code"] == 2 and f"LIGHTSPEED_ACCOUNT_{SECOND}_REFRESH_TOKEN" in other["error"]


@pytest.fixture
def first_alone_has_a_client(lightspeed, several) -> dict[str, str]:
    """Each merchant authorised its own app; the second account's client is not configured yet."""
    return {**several, "LIGHTSPEED_CLIENT_ID": "", "LIGHTSPEED_CLIENT_SECRET": "",
            "LIGHTSPEED_ACCOUNT_182255_CLIENT_ID": lightspeed.client_id,
            "LIGHTSPEED_ACCOUNT_182255_CLIENT_SECRET": lightspeed.client_secret}


def test_an_account_without_a_client_fails_alone_and_is_named(cli, lightspeed, salesforce, boutique,
                                                                first_alone_has_a_client):
    sell(lightspeed, boutique)

    result = cli("sync", "--json", env=first_alone_has_a_client)

    assert result.code == 2, result.stdout
    first, other = result.json["accounts"]
    assert first["outcome"] == "ok" and first["sales"]["written"] == 1
    assert other["exit_code"] == 2 and f"LIGHTSPEED_ACCOUNT_{SECOND}_CLIENT_SECRET" in other["error"]


def test_account_option_runs_that_account_while_another_lacks_its_client(cli, lightspeed, salesforce, boutique,
                                                                          first_alone_has_a_client):
    sell(lightspeed, boutique)

    result = cli("sync", "--account", "182255", "--json", env=first_alone_has_a_client)

    assert result.code == 0, result.stdout
    assert [t["LS_Sale_ID__c"] for t in salesforce.records("Sales_Transaction__c")] == ["182255-1"]


def test_an_account_may_have_its_own_client(cli, lightspeed, salesforce, boutique):
    other = lightspeed.add_account(SECOND, refresh_token="ls-refresh-x", client_id="montaigne-app",
                                   client_secret="montaigne-secret")
    sell(other, open_boutique(other))
    env = {**lightspeed.accounts_env(), "LIGHTSPEED_ACCOUNT_ID": ""}
    assert env[f"LIGHTSPEED_ACCOUNT_{SECOND}_CLIENT_ID"] == "montaigne-app"

    result = cli("sync", "--account", SECOND, "-vv", env=env)

    assert result.code == 0, result.stderr
    assert "montaigne-secret" not in result.stderr + result.stdout and "ls-refresh-x" not in result.stderr


def test_dry_run_and_backfill_report_each_account(cli, lightspeed, salesforce, boutique, second, several):
    sell(lightspeed, boutique)
    sell(second, open_boutique(second))

    preview = cli("dry-run", "--json", env=several)
    backfill = cli("backfill", "--from", "2026-01-01", "--account", "182255", "--json", env=several)

    assert [(a["account_id"], len(a["plans"])) for a in preview.json["accounts"]] == [("182255", 1), (SECOND, 1)]
    assert backfill.code == 0 and [a["account_id"] for a in backfill.json["accounts"]] == ["182255"]
    assert [t["LS_Sale_ID__c"] for t in salesforce.records("Sales_Transaction__c")] == ["182255-1"]


def test_dry_run_of_both_accounts_previews_one_person_account_for_a_client_of_both(cli, lightspeed, salesforce,
                                                                                    boutique, second, several):
    sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="ana@example.com"))
    sell(second, open_boutique(second), second.add_customer("Ana", "Lima", email="ana@example.com"))

    preview = cli("dry-run", "--json", env=several)
    synced = cli("sync", env=several)

    assert synced.code == 0 and len(salesforce.records("Account")) == 1
    planned = [[plan["match"] for plan in account["plans"]] for account in preview.json["accounts"]]
    written = [[t["Match_Status__c"]] for t in salesforce.records("Sales_Transaction__c")]
    assert planned == written == [["Created"], ["Email"]]  # what the next sync does: one account, found by email


def test_checkpoint_reset_acts_on_every_account_or_the_one_given(cli, lightspeed, boutique, second, several):
    reset_one = cli("checkpoint", "reset", "--to", "2026-01-01", "--yes", "--account", SECOND, "--json", env=several)
    reset_all = cli("checkpoint", "reset", "--to", "2026-02-01", "--yes", "--json", env=several)

    assert [a["account_id"] for a in reset_one.json["accounts"]] == [SECOND]
    assert [a["checkpoint"] for a in reset_all.json["accounts"]] == ["2026-02-01T00:00:00+00:00"] * 2
    assert reset_all.json["accounts"][1]["previous"] == "2026-01-01T00:00:00+00:00"


def test_checkpoint_reset_of_every_account_while_one_is_running_exits_4_and_resets_none(cli, second, several,
                                                                                         state_path):
    assert cli("checkpoint", "reset", "--to", "2026-01-01", "--yes", env=several).code == 0
    holder = os.open(f"{state_path}.{SECOND}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # a sync of the second account is under way
    try:
        result = cli("checkpoint", "reset", "--to", "2026-02-01", "--yes", env=several)
    finally:
        os.close(holder)

    assert result.code == 4  # "another run holds the lock; this one did nothing" (contract §1)
    checkpoints = cli("checkpoint", "show", "--json", env=several).json["checkpoints"]
    assert {i: c["cursor"] for i, c in checkpoints.items()} == {"182255": "2026-01-01T00:00:00+00:00",
                                                               SECOND: "2026-01-01T00:00:00+00:00"}


def test_rejects_retry_refuses_a_key_that_is_not_a_sale_key(cli):
    result = cli("rejects", "retry", "182255")

    assert result.code == 2 and "not a sale key" in result.stderr


def test_checkpoint_takes_the_account_before_or_after_its_subcommand(cli, several):
    before = cli("checkpoint", "--account", SECOND, "reset", "--to", "2026-01-01", "--yes", "--json", env=several)
    after = cli("checkpoint", "show", "--account", SECOND, "--json", env=several)

    assert [a["account_id"] for a in before.json["accounts"]] == [SECOND]
    assert list(after.json["checkpoints"]) == [SECOND]
    assert after.json["checkpoints"][SECOND]["cursor"] == "2026-01-01T00:00:00+00:00"


def test_checkpoint_show_of_one_account_reports_that_accounts_last_run(cli, lightspeed, boutique, second, several):
    assert cli("sync", "--account", "182255", env=several).code == 0  # the second account has not run yet

    shown = cli("checkpoint", "show", "--account", SECOND, "--json", env=several).json

    assert shown["checkpoints"][SECOND]["cursor"] is None and shown["last_run"] is None


def test_status_fails_while_one_accounts_last_sync_failed_and_names_that_account(cli, lightspeed, salesforce,
                                                                                 boutique, second, several):
    sell(second, open_boutique(second))
    lightspeed.revoke_all_tokens()
    assert cli("sync", env=several).code == 1
    assert cli("sync", "--account", SECOND, env=several).code == 0  # the other account has run well since

    result = cli("status", "--json", env=several)

    assert result.code == 1
    assert [p.split(" (")[0] for p in result.json["problems"]] == ["the last sync of account 182255"]
    assert {i: run["outcome"] for i, run in result.json["last_runs"].items()} == {"182255": "failed", SECOND: "ok"}


def test_reconcile_reports_each_account(cli, lightspeed, salesforce, boutique, second, several):
    sell(lightspeed, boutique)
    sell(second, open_boutique(second))
    assert cli("sync", "--account", "182255", env=several).code == 0  # the second account not synced yet

    result = cli("reconcile", "--from", "2026-01-01", "--to", "2027-01-01", "--json", env=several)

    assert result.code == 3
    first, other = result.json["accounts"]
    assert (first["account_id"], first["exit_code"]) == ("182255", 0)
    assert (other["account_id"], other["exit_code"]) == (SECOND, 3) and [s["sale_key"] for s in other["missing"]] == [f"{SECOND}-1"]
