"""What a run prints: JSON lines for log shippers, a client's email and phone masked in logs."""

import json

import pytest

from conftest import sell
from lspos_sync.output import mask_contact


@pytest.mark.parametrize("text, masked", [
    ("2 accounts have PersonEmail ana.lima@example.com", "2 accounts have PersonEmail a***@example.com"),
    ("phone +14155550134", "phone +***34"),
    ("sale 182255-270 at 2026-11-29T13:50:16+00:00", "sale 182255-270 at 2026-11-29T13:50:16+00:00"),
])
def test_contact_details_are_masked_but_keys_and_times_are_not(text, masked):
    assert mask_contact(text) == masked


def test_json_log_format_prints_only_json_lines_with_the_run_id(cli, lightspeed, salesforce, boutique):
    rt = salesforce.person_account_record_type_id
    for last in ("Lima", "Souza"):
        salesforce.insert("Account", {"RecordTypeId": rt, "LastName": last, "PersonEmail": "family@example.com"})
    sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="family@example.com"))

    result = cli("sync", "--log-format", "json")

    assert result.code == 0, result.stderr
    lines = [json.loads(line) for line in (result.stdout + result.stderr).splitlines()]
    [summary] = [line for line in lines if line.get("event") == "result"]
    assert summary["sales"]["written"] == 1 and summary["command"] == "sync"
    phases = {line.get("phase") for line in lines}
    assert {"batch", "read"} <= phases
    assert all(line.get("run_id") for line in lines if line.get("phase"))
    ambiguous = [line for line in lines if "ambiguous" in line.get("message", "")]
    assert ambiguous and "family@example.com" not in result.stderr and "f***@example.com" in ambiguous[0]["message"]


def test_plain_sync_is_one_summary_line_on_success(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    result = cli("sync")
    assert result.code == 0 and result.stderr == "" and len(result.stdout.splitlines()) == 1


def test_a_successful_sync_under_cron_prints_only_its_summary_line_with_profile_enrichment_on(
        cli, lightspeed, salesforce, boutique):
    """§1 "Under cron the output is plain, line-oriented and quiet on success except for one summary line." With
    LSPOS_ENRICH_PROFILES on (§5), the accounts a run fills are no fault: logged at INFO (-v, JSON logs), not
    printed on stderr by a plain run."""
    salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id, "LastName": "Roy",
                                  "PersonEmail": "jo.roy@example.com"})
    customer = lightspeed.add_customer("Jo", "Roy", email="jo.roy@example.com", phones={"Mobile": "+14155550134"})
    sell(lightspeed, boutique, customer_id=customer)
    result = cli("sync", env={"LSPOS_ENRICH_PROFILES": "true"})
    assert result.code == 0, result.stderr
    account = next(a for a in salesforce.records("Account") if a.get("PersonEmail") == "jo.roy@example.com")
    assert account.get("PersonMobilePhone"), "the account was not enriched: the test proves nothing"
    assert len(result.stdout.splitlines()) == 1, result.stdout
    assert result.stderr == "", result.stderr
