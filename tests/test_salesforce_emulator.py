"""Tests for the Salesforce REST API emulator, driven over real HTTPS on loopback."""

from __future__ import annotations

import base64
import ssl
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import httpx
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceAuthenticationFailed
from simple_salesforce.login import SalesforceLogin

from lspos_sync.emulators.salesforce import Field, SalesforceEmulator

API = "/services/data/v62.0"
UPSERT_SALES = f"{API}/composite/sobjects/Sales_Transaction__c/LS_Sale_ID__c"
UPSERT_LINES = f"{API}/composite/sobjects/Sales_Line_Item__c/LS_Sale_Line_ID__c"
UPSERT_ACCOUNTS = f"{API}/composite/sobjects/Account/LS_Customer_ID__c"
METADATA = Path(__file__).resolve().parent.parent / "docs" / "salesforce" / "force-app" / "main" / "default"


@pytest.fixture
def sf(tmp_path: Path) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(tmp_path / "tls") as emulator:
        yield emulator


def _client(sf: SalesforceEmulator, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=sf.instance_url, verify=ssl.create_default_context(cafile=str(sf.ca_bundle)),
                        headers={"Authorization": f"Bearer {token or sf.access_token}"})


@pytest.fixture
def client(sf: SalesforceEmulator) -> Iterator[httpx.Client]:
    with _client(sf) as c:
        yield c


def _sale(sale_id: str, **fields: Any) -> dict:
    return {"attributes": {"type": "Sales_Transaction__c"}, "LS_Sale_ID__c": sale_id, "Status__c": "Completed",
            "Match_Status__c": "Guest", **fields}


def _line(line_id: str, sale_id: str, **fields: Any) -> dict:
    return {"attributes": {"type": "Sales_Line_Item__c"}, "LS_Sale_Line_ID__c": line_id,
            "Sales_Transaction__r": {"LS_Sale_ID__c": sale_id}, **fields}


def _person(sf: SalesforceEmulator, customer_id: str, **fields: Any) -> dict:
    return {"attributes": {"type": "Account"}, "RecordTypeId": sf.person_account_record_type_id,
            "LS_Customer_ID__c": customer_id, **fields}


def _query(client: httpx.Client, soql: str) -> dict:
    response = client.get(f"{API}/query", params={"q": soql})
    assert response.status_code == 200, response.text
    return response.json()


def _requests_session(sf: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> requests.Session:
    # requests lets REQUESTS_CA_BUNDLE override session.verify, so the environment must point at the emulator's CA too
    for name, value in sf.env().items():
        monkeypatch.setenv(name, value)
    session = requests.Session()
    session.verify = str(sf.ca_bundle)
    return session


def _seed_people(sf: SalesforceEmulator) -> None:
    for customer_id, first, last, email in [("1-1", "Ada", "Lovelace", "Ada@Example.com"),
                                            ("1-2", "Alan", "Turing", "alan@example.com"),
                                            ("1-3", "Grace", "Hopper", "grace@navy.mil")]:
        sf.insert("Account", {"RecordTypeId": sf.person_account_record_type_id, "FirstName": first,
                              "LastName": last, "PersonEmail": email, "LS_Customer_ID__c": customer_id})
    sf.insert("Account", {"Name": "Acme Ltd", "Phone": "+15550100"})


# ---- composite limits ------------------------------------------------------------------------------


def test_composite_with_26_subrequests_is_refused_whole(sf: SalesforceEmulator, client: httpx.Client) -> None:
    subrequests = [{"method": "GET", "url": f"{API}/limits", "referenceId": f"r{i}"} for i in range(26)]
    response = client.post(f"{API}/composite", json={"compositeRequest": subrequests})
    assert response.status_code == 400
    [result] = response.json()["compositeResponse"]
    assert result["body"][0]["errorCode"] == "LIMIT_EXCEEDED"
    assert result["referenceId"] is None


def test_composite_with_six_collection_or_query_subrequests_is_refused(client: httpx.Client) -> None:
    subrequests = [{"method": "PATCH", "url": UPSERT_SALES, "referenceId": f"c{i}",
                    "body": {"records": [_sale(f"1-{i}")]}} for i in range(5)]
    subrequests.append({"method": "GET", "url": f"{API}/query?q=SELECT+Id+FROM+Account", "referenceId": "q"})
    response = client.post(f"{API}/composite", json={"compositeRequest": subrequests})
    assert response.status_code == 400
    assert response.json()["compositeResponse"][0]["body"][0]["errorCode"] == "LIMIT_EXCEEDED"
    ok = client.post(f"{API}/composite", json={"compositeRequest": subrequests[:5]})
    assert [r["httpStatusCode"] for r in ok.json()["compositeResponse"]] == [200] * 5


def test_collection_of_201_records_is_refused(sf: SalesforceEmulator, client: httpx.Client) -> None:
    response = client.patch(UPSERT_SALES, json={"records": [_sale(f"1-{i}") for i in range(201)]})
    assert response.status_code == 400
    assert response.json() == [{"message": "record limit reached. cannot submit more than 200 records into this call",
                                "errorCode": "EXCEEDED_ID_LIMIT"}]
    assert sf.records("Sales_Transaction__c") == []


@pytest.mark.parametrize("bad", [{"referenceId": "R-2024/001"}, {"httpHeaders": {"Content-Type": "text/plain"}},
                                 {"url": "/services/apexrest/x"}])
def test_composite_refuses_bad_reference_ids_headers_and_urls(client: httpx.Client, bad: dict) -> None:
    sub = {"method": "GET", "url": f"{API}/limits", "referenceId": "ok", **bad}
    response = client.post(f"{API}/composite", json={"compositeRequest": [sub]})
    assert response.status_code == 400


# ---- collections -----------------------------------------------------------------------------------


def test_upsert_creates_then_updates_idempotently(sf: SalesforceEmulator, client: httpx.Client) -> None:
    body = {"allOrNone": False, "records": [_sale("1-1", Total__c=10.5), _sale("1-2", Total__c=3)]}
    first = client.patch(UPSERT_SALES, json=body).json()
    assert [(r["success"], r["created"], r["errors"]) for r in first] == [(True, True, [])] * 2
    body["records"][0]["Total__c"] = 12.345  # Currency(16,2): stored rounded half-up
    second = client.patch(UPSERT_SALES, json=body).json()
    assert [(r["id"], r["created"]) for r in second] == [(r["id"], False) for r in first]
    rows = sorted(sf.records("Sales_Transaction__c"), key=lambda r: r["LS_Sale_ID__c"])
    assert [(r["LS_Sale_ID__c"], r["Total__c"]) for r in rows] == [("1-1", 12.35), ("1-2", 3.0)]
    assert len(first[0]["id"]) == 18 and rows[0]["Name"].startswith("ST-")


def test_person_account_without_last_name_fails_per_record_inside_http_200(
        sf: SalesforceEmulator, client: httpx.Client) -> None:
    body = {"records": [_person(sf, "1-1", FirstName="Ada", LastName="Lovelace", PersonEmail="ada@example.com"),
                        _person(sf, "1-2", FirstName="Nobody")]}
    response = client.patch(UPSERT_ACCOUNTS, json=body)
    assert response.status_code == 200
    ok, failed = response.json()
    assert ok["success"] and ok["created"]
    assert failed == {"success": False, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING",
                                                   "message": "Required fields are missing: [LastName]",
                                                   "fields": ["LastName"]}]}
    account = sf.get("Account", ok["id"])
    assert account["Name"] == "Ada Lovelace" and account["IsPersonAccount"] is True


@pytest.mark.parametrize("fields, code", [
    ({"PersonEmail": "not-an-email"}, "INVALID_EMAIL_ADDRESS"),
    ({"FirstName": "x" * 41}, "STRING_TOO_LONG"),
    ({"Name": "Ada L."}, "INVALID_FIELD_FOR_INSERT_UPDATE"),  # Name is computed on a person account
])
def test_person_account_field_rules_are_per_record_errors(sf: SalesforceEmulator, client: httpx.Client,
                                                          fields: dict, code: str) -> None:
    body = {"records": [_person(sf, "1-1", LastName="Lovelace", **fields)]}
    [result] = client.patch(UPSERT_ACCOUNTS, json=body).json()
    assert result["errors"][0]["statusCode"] == code


def test_person_fields_on_a_business_account_are_refused(sf: SalesforceEmulator) -> None:
    with pytest.raises(ValueError, match="INVALID_FIELD_FOR_INSERT_UPDATE"):
        sf.insert("Account", {"Name": "Acme", "PersonEmail": "a@acme.com"})


def test_upsert_results_may_leave_out_created_as_a_reference_example_does(sf: SalesforceEmulator,
                                                                         client: httpx.Client) -> None:
    sf.upsert_results_say_created = False  # fact sheet §1.3: treat `created` (and a failure's `id`) as optional
    first = client.patch(UPSERT_SALES, json={"records": [_sale("1-1")]}).json()
    again = client.patch(UPSERT_SALES, json={"records": [_sale("1-1"), _sale("1-1")]}).json()
    assert first == [{"id": first[0]["id"], "success": True, "errors": []}]
    assert all("created" not in r for r in again)


def test_a_key_repeated_in_one_upsert_fails_both_records(client: httpx.Client) -> None:
    results = client.patch(UPSERT_SALES, json={"records": [_sale("1-1"), _sale("1-1"), _sale("1-2")]}).json()
    assert [r["success"] for r in results] == [False, False, True]
    assert results[0]["errors"][0]["statusCode"] == "DUPLICATE_VALUE"


def test_an_upsert_that_loses_a_race_is_refused_as_a_duplicate_and_matches_the_winner_when_sent_again(
        sf: SalesforceEmulator, client: httpx.Client) -> None:
    sf.upsert_race(1, "Sales_Transaction__c")
    assert sf.upsert_races_left == 1
    body = {"allOrNone": True, "records": [_sale("1-1", Total__c=10), _sale("1-2", Total__c=3)]}
    lost, rolled_back = client.patch(UPSERT_SALES, json=body).json()
    assert sf.upsert_races_left == 0
    [winner] = sf.records("Sales_Transaction__c")  # the other client's commit outlives this request's rollback
    assert lost == {"success": False, "errors": [{
        "statusCode": "DUPLICATE_VALUE", "fields": [],
        "message": f"duplicate value found: LS_Sale_ID__c duplicates value on record with id: {winner['Id']}"}]}
    assert rolled_back["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    again = client.patch(UPSERT_SALES, json=body).json()
    assert [(r["success"], r["created"]) for r in again] == [(True, False), (True, True)]
    assert again[0]["id"] == winner["Id"] and len(sf.records("Sales_Transaction__c")) == 2


def _sale_key_not_unique(sf: SalesforceEmulator) -> None:
    """LS_Sale_ID__c made External ID but not Unique, as an admin may create it (fact sheet §1.3)."""
    sf.remove_field("Sales_Transaction__c", "LS_Sale_ID__c")
    sf.add_field("Sales_Transaction__c", Field("LS_Sale_ID__c", "text", 40, external_id=True, unique=False))


def test_an_external_id_that_is_not_unique_describes_so_and_takes_a_second_record_with_its_key(
        sf: SalesforceEmulator, client: httpx.Client) -> None:
    _sale_key_not_unique(sf)
    described = _fields(_describe(client, "Sales_Transaction__c"))["LS_Sale_ID__c"]
    assert (described["externalId"], described["unique"], described["idLookup"]) == (True, False, True)
    sf.upsert_race(1, "Sales_Transaction__c")  # two clients create the same new key: nothing refuses either
    [ours] = client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Total__c=10)]}).json()
    assert ours["success"] and ours["created"]
    assert len(sf.records("Sales_Transaction__c")) == 2


def test_an_upsert_or_reference_by_an_external_id_matching_several_records_is_duplicate_external_id(
        sf: SalesforceEmulator, client: httpx.Client) -> None:
    _sale_key_not_unique(sf)
    first, second = (sf.insert("Sales_Transaction__c", {"LS_Sale_ID__c": key, "Status__c": "Completed"})
                     for key in ("1-1", "1-1"))
    [upserted, other] = client.patch(UPSERT_SALES, json={"records": [_sale("1-1"), _sale("1-2")]}).json()
    assert upserted == {"success": False, "errors": [{
        "statusCode": "DUPLICATE_EXTERNAL_ID", "fields": ["LS_Sale_ID__c"],
        "message": f"LS Sale ID: more than one record found for external id field: [{first}, {second}]"}]}
    assert other["success"] and other["created"]
    [line] = client.patch(UPSERT_LINES, json={"records": [_line("1-1-1", "1-1")]}).json()
    assert line["errors"][0]["statusCode"] == "DUPLICATE_EXTERNAL_ID"
    by_row = client.patch(f"{API}/sobjects/Sales_Transaction__c/LS_Sale_ID__c/1-1", json={"Total__c": 1})
    assert by_row.status_code == 300  # §1.3: several matches -> 300, listing them
    assert by_row.json() == [f"{API}/sobjects/Sales_Transaction__c/{first}",
                             f"{API}/sobjects/Sales_Transaction__c/{second}"]
    assert client.get(f"{API}/sobjects/Sales_Transaction__c/LS_Sale_ID__c/1-1").status_code == 300
    assert {r["Total__c"] for r in sf.records("Sales_Transaction__c")} == {None}


def test_restricted_picklist_and_unknown_field(sf: SalesforceEmulator, client: httpx.Client) -> None:
    [result] = client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Match_Status__c="Maybe")]}).json()
    assert result["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    response = client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Colour__c="red")]})
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "INVALID_FIELD"


def test_a_number_far_out_of_range_is_refused_per_record_and_nan_or_infinity_is_not_json(client: httpx.Client) -> None:
    [result] = client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Total__c=1e30)]}).json()
    assert result["errors"][0]["statusCode"] == "NUMBER_OUTSIDE_VALID_RANGE"
    body = '{"records": [{"attributes": {"type": "Sales_Transaction__c"}, "LS_Sale_ID__c": "1-2", "Total__c": Infinity}]}'
    response = client.patch(UPSERT_SALES, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()[0]["errorCode"] == "JSON_PARSER_ERROR"


def test_lines_and_account_resolve_parents_by_external_id(sf: SalesforceEmulator, client: httpx.Client) -> None:
    account_id = sf.insert("Account", {"RecordTypeId": sf.person_account_record_type_id, "LastName": "Hopper",
                                       "LS_Customer_ID__c": "1-7"})
    sale = _sale("182255-5", Account__r={"LS_Customer_ID__c": "1-7"}, Match_Status__c="Linked")
    assert client.patch(UPSERT_SALES, json={"records": [sale]}).json()[0]["success"]
    lines = client.patch(UPSERT_LINES, json={"records": [_line("182255-9", "182255-5", Quantity__c=2)]}).json()
    assert lines[0]["success"], lines
    [row] = sf.records("Sales_Transaction__c")
    assert row["Account__c"] == account_id
    assert sf.get("Sales_Line_Item__c", lines[0]["id"])["Sales_Transaction__c"] == row["Id"]


def test_unknown_parent_and_two_key_reference_are_per_record_errors(client: httpx.Client) -> None:
    bad = _line("1-9", "nope")
    two = _line("1-10", "x") | {"Sales_Transaction__r": {"LS_Sale_ID__c": "x", "Name": "ST-1"}}
    response = client.patch(UPSERT_LINES, json={"records": [bad]})
    assert response.status_code == 200
    assert response.json()[0]["errors"] == [{
        "statusCode": "INVALID_FIELD", "fields": [],
        "message": "Foreign key external ID: nope not found for field LS_Sale_ID__c in entity Sales_Transaction__c"}]
    response = client.patch(UPSERT_LINES, json={"records": [two]})
    assert response.status_code == 400  # Name is no external ID field: the body does not deserialize
    two["Sales_Transaction__r"] = {"LS_Sale_ID__c": "x", "ls_sale_id__C": "x"}
    assert client.patch(UPSERT_LINES, json={"records": [two]}).json()[0]["errors"][0]["message"] == (
        "More than 1 field provided in an external foreign key reference")


def test_reparenting_a_line_item_is_refused(client: httpx.Client) -> None:
    client.patch(UPSERT_SALES, json={"records": [_sale("1-1"), _sale("1-2")]})
    client.patch(UPSERT_LINES, json={"records": [_line("1-1-1", "1-1")]})
    [result] = client.patch(UPSERT_LINES, json={"records": [_line("1-1-1", "1-2")]}).json()
    assert result["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"


def test_all_or_none_collection_rolls_back_every_record(sf: SalesforceEmulator, client: httpx.Client) -> None:
    client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Total__c=1)]})
    body = {"allOrNone": True, "records": [_sale("1-1", Total__c=2), _sale("1-2"), _sale("1-3", Status__c="Bad")]}
    updated, created, failed = client.patch(UPSERT_SALES, json=body).json()
    rolled = [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "fields": [], "message":
               "Record rolled back because not all records were valid and the request was using AllOrNone header"}]
    assert updated["errors"] == rolled and "id" in updated
    assert created == {"success": False, "errors": rolled}
    assert failed["errors"][0]["statusCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert [(r["LS_Sale_ID__c"], r["Total__c"]) for r in sf.records("Sales_Transaction__c")] == [("1-1", 1.0)]


def test_create_update_get_and_delete_collections(sf: SalesforceEmulator, client: httpx.Client) -> None:
    created = client.post(f"{API}/composite/sobjects", json={"records": [
        {"attributes": {"type": "Account"}, "Name": "Acme"}, _sale("1-1")]}).json()
    assert [r["success"] for r in created] == [True, True] and "created" not in created[0]
    ids = [r["id"] for r in created]
    updated = client.patch(f"{API}/composite/sobjects", json={"records": [
        {"attributes": {"type": "Account"}, "Id": ids[0], "Phone": "555"}]}).json()
    assert updated == [{"id": ids[0], "success": True, "errors": []}]
    got = client.get(f"{API}/composite/sobjects/Account", params={"ids": ids[0], "fields": "Name,Phone"}).json()
    assert got[0]["Phone"] == "555" and got[0]["attributes"]["type"] == "Account"
    deleted = client.delete(f"{API}/composite/sobjects", params={"ids": ",".join(ids)}).json()
    assert [r["success"] for r in deleted] == [True, True]
    assert sf.records("Account") == [] and sf.records("Sales_Transaction__c") == []


def test_deleting_a_transaction_deletes_its_lines(sf: SalesforceEmulator, client: httpx.Client) -> None:
    client.patch(UPSERT_SALES, json={"records": [_sale("1-1"), _sale("1-2")]})
    client.patch(UPSERT_LINES, json={"records": [_line("a", "1-1"), _line("b", "1-1"), _line("c", "1-2")]})
    response = client.delete(f"{API}/sobjects/Sales_Transaction__c/LS_Sale_ID__c/1-1")
    assert response.status_code == 204
    assert [r["LS_Sale_Line_ID__c"] for r in sf.records("Sales_Line_Item__c")] == ["c"]
    everything = client.get(f"{API}/queryAll", params={"q": "SELECT Id FROM Sales_Line_Item__c WHERE IsDeleted = true"})
    assert everything.json()["totalSize"] == 2


def test_validation_rule_rejects_matching_records(sf: SalesforceEmulator, client: httpx.Client) -> None:
    sf.add_validation_rule("Sales_Transaction__c", lambda r: (r["Total__c"] or 0) < 0 and r["Status__c"] != "Refund",
                           "A negative total must be a refund")
    results = client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Total__c=-5), _sale("1-2", Total__c=5)]})
    assert [r["success"] for r in results.json()] == [False, True]
    assert results.json()[0]["errors"][0] == {"statusCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                                              "message": "A negative total must be a refund", "fields": []}


# ---- sObject rows ----------------------------------------------------------------------------------


def test_sobject_rows_create_get_patch_and_upsert(sf: SalesforceEmulator, client: httpx.Client) -> None:
    created = client.post(f"{API}/sobjects/Account", json={"Name": "Acme"})
    assert created.status_code == 201 and created.json()["success"]
    record_id = created.json()["id"]
    assert client.patch(f"{API}/sobjects/Account/{record_id}", json={"Phone": "1"}).status_code == 204
    assert client.get(f"{API}/sobjects/Account/{record_id[:15]}").json()["Phone"] == "1"
    missing = client.post(f"{API}/sobjects/Account", json={"Phone": "1"})
    assert missing.status_code == 400 and missing.json()[0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    first = client.patch(f"{API}/sobjects/Sales_Transaction__c/LS_Sale_ID__c/9-9", json={"Total__c": 1})
    again = client.patch(f"{API}/sobjects/Sales_Transaction__c/LS_Sale_ID__c/9-9", json={"Total__c": 2})
    assert (first.status_code, first.json()["created"]) == (201, True)
    assert again.status_code == 200
    assert again.json() == {"id": first.json()["id"], "success": True, "errors": [], "created": False}
    assert client.get(f"{API}/sobjects/Account/{record_id[:-1]}X").json()[0]["errorCode"] == "MALFORMED_ID"
    assert client.get(f"{API}/sobjects/Account/0015g0000000999AAA").status_code == 404


# ---- composite -------------------------------------------------------------------------------------


def test_composite_references_between_subrequests(sf: SalesforceEmulator, client: httpx.Client) -> None:
    subrequests = [
        {"method": "POST", "url": f"{API}/sobjects/Account", "referenceId": "acct",
         "body": {"RecordTypeId": sf.person_account_record_type_id, "LastName": "Hopper"}},
        {"method": "GET", "url": f"{API}/query?q=SELECT+Id,Name+FROM+Account+WHERE+Id='@{{acct.id}}'",
         "referenceId": "found"},
        {"method": "PATCH", "url": UPSERT_SALES, "referenceId": "sales",
         "body": {"records": [_sale("1-1", Account__c="@{found.records[0].Id}", Match_Status__c="Created")]}},
        {"method": "GET", "url": f"{API}/sobjects/Sales_Transaction__c/@{{sales[0].id}}", "referenceId": "sale"},
        {"method": "GET", "url": f"{API}/sobjects/Account/@{{acct.missing}}", "referenceId": "halted"},
    ]
    body = client.post(f"{API}/composite", json={"collateSubrequests": False, "compositeRequest": subrequests}).json()
    results = {r["referenceId"]: r for r in body["compositeResponse"]}
    assert results["acct"]["httpStatusCode"] == 201
    assert results["acct"]["httpHeaders"]["Location"].endswith(results["acct"]["body"]["id"])
    assert results["found"]["body"]["records"][0]["Name"] == "Hopper"
    assert results["sale"]["body"]["Account__c"] == results["acct"]["body"]["id"]
    assert results["halted"]["httpStatusCode"] == 400
    assert results["halted"]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert sf.requests[-1].subrequests[0]["httpStatusCode"] == 201


def test_composite_all_or_none_rolls_back_the_whole_composite(sf: SalesforceEmulator, client: httpx.Client) -> None:
    subrequests = [
        {"method": "PATCH", "url": UPSERT_SALES, "referenceId": "sales", "body": {"records": [_sale("1-1")]}},
        {"method": "PATCH", "url": UPSERT_LINES, "referenceId": "lines",
         "body": {"records": [_line("1-1-1", "1-1"), _line("1-1-2", "missing")]}},
        {"method": "GET", "url": f"{API}/limits", "referenceId": "after"},
    ]
    body = client.post(f"{API}/composite", json={"allOrNone": True, "compositeRequest": subrequests}).json()
    sales, lines, after = body["compositeResponse"]
    halted = [{"errorCode": "PROCESSING_HALTED",
               "message": "The transaction was rolled back since another operation in the same transaction failed."}]
    assert sales["body"] == halted and sales["httpStatusCode"] == 400
    assert lines["httpStatusCode"] == 200 and [r["success"] for r in lines["body"]] == [True, False]
    assert after["body"] == halted
    assert sf.records("Sales_Transaction__c") == [] and sf.records("Sales_Line_Item__c") == []


def test_composite_without_all_or_none_keeps_independent_work(sf: SalesforceEmulator, client: httpx.Client) -> None:
    subrequests = [
        {"method": "POST", "url": f"{API}/sobjects/Account", "referenceId": "bad", "body": {"Phone": "1"}},
        {"method": "PATCH", "url": UPSERT_SALES, "referenceId": "sales", "body": {"records": [_sale("1-1")]}},
        {"method": "PATCH", "url": f"{API}/sobjects/Account/@{{bad.id}}", "referenceId": "dep", "body": {}},
    ]
    body = client.post(f"{API}/composite", json={"compositeRequest": subrequests}).json()
    assert [r["httpStatusCode"] for r in body["compositeResponse"]] == [400, 200, 400]
    assert body["compositeResponse"][2]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert len(sf.records("Sales_Transaction__c")) == 1


def test_composite_collates_unrelated_subrequests_unless_told_not_to(sf: SalesforceEmulator,
                                                                    client: httpx.Client) -> None:
    def sale_then_line(n: str) -> list[dict]:
        return [{"method": "PATCH", "url": UPSERT_SALES, "referenceId": "sales", "body": {"records": [_sale(n)]}},
                {"method": "PATCH", "url": UPSERT_LINES, "referenceId": "lines",
                 "body": {"records": [_line(f"{n}-1", n)]}}]

    # collateSubrequests is true by default from v49: no guaranteed order, and the emulator runs them last first
    collated = client.post(f"{API}/composite", json={"compositeRequest": sale_then_line("1-1")}).json()
    assert [r["referenceId"] for r in collated["compositeResponse"]] == ["sales", "lines"]  # answered in order
    sales, lines = (r["body"][0] for r in collated["compositeResponse"])
    assert sales["success"] and not lines["success"]  # the line went in before its transaction existed
    in_order = client.post(f"{API}/composite", json={"collateSubrequests": False,
                                                     "compositeRequest": sale_then_line("1-2")}).json()
    assert [r["body"][0]["success"] for r in in_order["compositeResponse"]] == [True, True]


# ---- SOQL ------------------------------------------------------------------------------------------


def test_soql_in_is_case_insensitive(sf: SalesforceEmulator, client: httpx.Client) -> None:
    _seed_people(sf)
    result = _query(client, "SELECT Id, PersonEmail FROM Account WHERE IsPersonAccount = true AND "
                            "PersonEmail IN ('ada@example.com', 'GRACE@NAVY.MIL')")
    assert sorted(r["PersonEmail"] for r in result["records"]) == ["Ada@Example.com", "grace@navy.mil"]
    assert result["records"][0]["attributes"]["url"] == f"{API}/sobjects/Account/{result['records'][0]['Id']}"


def test_soql_like_is_case_insensitive_with_wildcards(sf: SalesforceEmulator, client: httpx.Client) -> None:
    _seed_people(sf)
    assert _query(client, "SELECT Name FROM Account WHERE Name LIKE 'a%'")["totalSize"] == 3
    turing = _query(client, "SELECT Name FROM Account WHERE LastName LIKE '_URING'")["records"]
    assert turing[0]["Name"] == "Alan Turing"
    assert _query(client, "SELECT Name FROM Account WHERE Name LIKE 'Acme\\_%'")["totalSize"] == 0


def test_soql_or_not_and_parentheses(sf: SalesforceEmulator, client: httpx.Client) -> None:
    _seed_people(sf)
    result = _query(client, "SELECT Name FROM Account WHERE IsPersonAccount = true AND "
                            "(LastName = 'hopper' OR (NOT FirstName != 'Alan')) ORDER BY Name DESC")
    assert [r["Name"] for r in result["records"]] == ["Grace Hopper", "Alan Turing"]
    mixed = client.get(f"{API}/query", params={"q": "SELECT Id FROM Account WHERE Name = 'a' AND Phone = 'b' OR "
                                                     "Id = null"})
    assert mixed.status_code == 400 and mixed.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_soql_dotted_parent_fields(sf: SalesforceEmulator, client: httpx.Client) -> None:
    _seed_people(sf)
    client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Account__r={"LS_Customer_ID__c": "1-2"}), _sale("1-2")]})
    result = _query(client, "SELECT LS_Sale_ID__c, Account__r.LS_Customer_ID__c, Account__r.RecordType.DeveloperName "
                            "FROM Sales_Transaction__c ORDER BY LS_Sale_ID__c")
    linked, guest = result["records"]
    assert linked["Account__r"]["LS_Customer_ID__c"] == "1-2"
    assert linked["Account__r"]["RecordType"]["DeveloperName"] == "PersonAccount"
    assert linked["Account__r"]["attributes"]["type"] == "Account"
    assert guest["Account__r"] is None
    filtered = _query(client, "SELECT Id FROM Account WHERE RecordType.DeveloperName = 'PersonAccount'")
    assert filtered["totalSize"] == 3


def test_soql_pages_over_2000_rows(sf: SalesforceEmulator, client: httpx.Client) -> None:
    for i in range(2001):
        sf.insert("Sales_Transaction__c", {"LS_Sale_ID__c": f"1-{i}"})
    first = _query(client, "SELECT Id FROM Sales_Transaction__c")
    assert (first["totalSize"], first["done"], len(first["records"])) == (2001, False, 2000)
    assert first["nextRecordsUrl"].startswith(f"{API}/query/01g") and first["nextRecordsUrl"].endswith("-2000")
    last = client.get(first["nextRecordsUrl"]).json()
    assert (last["done"], len(last["records"]), "nextRecordsUrl" in last) == (True, 1, False)


def test_soql_count_and_limit(sf: SalesforceEmulator, client: httpx.Client) -> None:
    _seed_people(sf)
    assert _query(client, "SELECT COUNT() FROM Account WHERE IsPersonAccount = false") == {
        "totalSize": 1, "done": True, "records": []}
    assert len(_query(client, "SELECT Id FROM Account LIMIT 2")["records"]) == 2


@pytest.mark.parametrize("soql, code", [
    ("SELECT Id FROM Account WHERE", "MALFORMED_QUERY"),
    ("SELECT Nope__c FROM Account", "INVALID_FIELD"),
    ("SELECT Id FROM Account WHERE IsPersonAccount = 'true'", "INVALID_FIELD"),
    ("SELECT Id FROM Nope__c", "INVALID_TYPE"),
    ("SELECT Id FROM Account WHERE Name = 'it\\'s' OR Name = 'x" + "y" * 100_000 + "'", "MALFORMED_QUERY"),
])
def test_soql_errors(client: httpx.Client, soql: str, code: str) -> None:
    response = client.post(f"{API}/composite", json={"compositeRequest": [
        {"method": "GET", "url": f"{API}/query?q={httpx.QueryParams({'q': soql})['q']}", "referenceId": "q"}]})
    [result] = response.json()["compositeResponse"]
    assert result["httpStatusCode"] == 400 and result["body"][0]["errorCode"] == code


def test_a_statement_with_more_conditions_than_the_org_takes_is_too_complicated_inside_composite(
        sf: SalesforceEmulator, client: httpx.Client) -> None:
    sf.max_query_conditions = 4  # each IN value and each comparison counts
    fits = "SELECT Id FROM Account WHERE Name IN ('a','b') OR (IsPersonAccount = true AND Phone LIKE '%1%2')"
    too_many = "SELECT Id FROM Account WHERE Name IN ('a','b','c') OR (IsPersonAccount = true AND Phone LIKE '%1%2')"
    response = client.post(f"{API}/composite", json={"compositeRequest": [
        {"method": "GET", "url": f"{API}/query?q={httpx.QueryParams({'q': soql})['q']}", "referenceId": ref}
        for ref, soql in (("fits", fits), ("too_many", too_many))]})

    assert response.status_code == 200
    results = {r["referenceId"]: r for r in response.json()["compositeResponse"]}
    assert results["fits"]["httpStatusCode"] == 200
    assert results["too_many"]["httpStatusCode"] == 400
    assert results["too_many"]["body"] == [{"errorCode": "QUERY_TOO_COMPLICATED", "message": (
        "Query is either selecting too many fields or the filter conditions are very complicated.")}]


def test_a_statement_with_more_conditions_than_the_org_scans_in_time_is_stopped_with_query_timeout(
        sf: SalesforceEmulator, client: httpx.Client) -> None:
    sf.query_timeout_conditions = 2
    fits = "SELECT Id FROM Account WHERE Name IN ('a','b')"
    too_long = "SELECT Id FROM Account WHERE Name IN ('a','b') OR Phone LIKE '%1%2'"
    response = client.post(f"{API}/composite", json={"compositeRequest": [
        {"method": "GET", "url": f"{API}/query?q={httpx.QueryParams({'q': soql})['q']}", "referenceId": ref}
        for ref, soql in (("fits", fits), ("too_long", too_long))]})

    results = {r["referenceId"]: r for r in response.json()["compositeResponse"]}
    assert results["fits"]["httpStatusCode"] == 200
    assert (results["too_long"]["httpStatusCode"], results["too_long"]["body"]) == (
        400, [{"errorCode": "QUERY_TIMEOUT", "message": "Your query request was running for too long."}])


def test_get_uri_over_16384_bytes_is_414(client: httpx.Client) -> None:
    soql = "SELECT Id FROM Account WHERE Name IN (" + ",".join(f"'n{i}'" for i in range(3000)) + ")"
    assert client.get(f"{API}/query", params={"q": soql}).status_code == 414


def test_uri_and_headers_over_16384_bytes_are_431(client: httpx.Client) -> None:
    soql = "SELECT Id FROM Account WHERE Name IN (" + ",".join(f"'n{i}'" for i in range(900)) + ")"
    assert client.get(f"{API}/query", params={"q": soql}).status_code == 200  # the URI alone is under the cap
    padded = client.get(f"{API}/query", params={"q": soql}, headers={"X-Padding": "x" * 6000})
    assert padded.status_code == 431  # fact sheet §3.2: URI plus headers are capped at 16,384 bytes


@pytest.mark.parametrize("version, path, method, status", [
    ("41.0", "composite/sobjects", "POST", 404),  # Collections from 42.0
    ("42.0", "composite/sobjects", "POST", 200),
    ("45.0", "composite/sobjects/Sales_Transaction__c/LS_Sale_ID__c", "PATCH", 404),  # their upsert from 46.0
    ("46.0", "composite/sobjects/Sales_Transaction__c/LS_Sale_ID__c", "PATCH", 200),
])
def test_collections_exist_from_the_api_versions_the_reference_gives(client: httpx.Client, version: str, path: str,
                                                                     method: str, status: int) -> None:
    response = client.request(method, f"/services/data/v{version}/{path}", json={"records": [_sale("1-1")]})
    assert response.status_code == status, response.text


def test_collections_inside_composite_exist_from_43(client: httpx.Client) -> None:
    def composite(version: str) -> dict:
        sub = {"method": "POST", "url": f"/services/data/v{version}/composite/sobjects", "referenceId": "c",
               "body": {"records": [_sale(f"1-{version}")]}}
        return client.post(f"{API}/composite", json={"compositeRequest": [sub]}).json()["compositeResponse"][0]

    assert composite("42.0")["httpStatusCode"] == 404 and composite("43.0")["httpStatusCode"] == 200


# ---- faults, counting, auth ------------------------------------------------------------------------


def test_fail_next_answers_an_error_without_executing(sf: SalesforceEmulator, client: httpx.Client) -> None:
    sf.fail_next(path_contains="/composite/sobjects")
    response = client.patch(UPSERT_SALES, json={"records": [_sale("1-1")]})
    assert response.status_code == 503 and response.json()[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert sf.records("Sales_Transaction__c") == []
    assert client.patch(UPSERT_SALES, json={"records": [_sale("1-1")]}).status_code == 200


def test_drop_next_after_commit_really_commits(sf: SalesforceEmulator, client: httpx.Client) -> None:
    sf.drop_next(path_contains="/composite")
    with pytest.raises(httpx.TransportError):
        client.post(f"{API}/composite", json={"compositeRequest": [
            {"method": "PATCH", "url": UPSERT_SALES, "referenceId": "s", "body": {"records": [_sale("1-1")]}}]})
    assert [r["LS_Sale_ID__c"] for r in sf.records("Sales_Transaction__c")] == ["1-1"]
    assert sf.requests[-1].dropped
    sf.drop_next(path_contains="/composite", after_commit=False)
    with pytest.raises(httpx.TransportError):
        client.patch(UPSERT_SALES, json={"records": [_sale("1-2")]})
    assert len(sf.records("Sales_Transaction__c")) == 1


def test_api_calls_count_a_composite_as_one(tmp_path: Path) -> None:
    with SalesforceEmulator(tmp_path, daily_api_limit=3) as sf, _client(sf) as client:
        subrequests = [{"method": "GET", "url": f"{API}/limits", "referenceId": f"r{i}"} for i in range(10)]
        response = client.post(f"{API}/composite", json={"compositeRequest": subrequests})
        assert sf.api_calls == 1 and response.headers["Sforce-Limit-Info"] == "api-usage=1/3"
        assert client.get(f"{API}/limits").json()["DailyApiRequests"] == {"Max": 3, "Remaining": 1}
        client.get(f"{API}/query", params={"q": "SELECT Id FROM Account"})
        refused = client.get(f"{API}/limits")
        assert refused.status_code == 403 and refused.json() == [
            {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
        assert sf.api_calls == 3


def test_expired_session_is_401(sf: SalesforceEmulator, client: httpx.Client) -> None:
    assert client.get(f"{API}/limits").status_code == 200
    sf.expire_sessions()
    response = client.get(f"{API}/limits")
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


def test_jwt_bearer_grant_issues_a_working_token(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with SalesforceEmulator(tmp_path, jwt_public_key_pem=public) as sf:
        sf.expire_sessions()

        def grant(**claims: Any) -> httpx.Response:
            # the claims simple-salesforce builds, exp as a string included
            payload = {"iss": sf.consumer_key, "sub": sf.username, "aud": "https://login.salesforce.com",
                       "exp": f"{time.time() + 180:.0f}", **claims}
            return httpx.post(f"{sf.instance_url}/services/oauth2/token", verify=ssl.create_default_context(
                cafile=str(sf.ca_bundle)), data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                                 "assertion": jwt.encode(payload, key, algorithm="RS256")})

        response = grant()
        assert response.status_code == 200, response.text
        token = response.json()
        assert token["instance_url"] == sf.instance_url and token["token_type"] == "Bearer"
        with _client(sf, token["access_token"]) as client:
            assert client.get(f"{API}/limits").status_code == 200
        assert grant(sub="someone@else.com").json()["error"] == "invalid_grant"
        assert grant(exp=int(time.time()) - 10).status_code == 400
        assert grant(aud="https://example.com").json()["error"] == "invalid_grant"
        assert sf.api_calls == 1


def test_client_credentials_grant_with_form_or_basic_auth(sf: SalesforceEmulator) -> None:
    verify = ssl.create_default_context(cafile=str(sf.ca_bundle))
    url = f"{sf.instance_url}/services/oauth2/token"
    form = httpx.post(url, verify=verify, data={"grant_type": "client_credentials", "client_id": sf.consumer_key,
                                                "client_secret": sf.consumer_secret})
    basic = base64.b64encode(f"{sf.consumer_key}:{sf.consumer_secret}".encode()).decode()
    header = httpx.post(url, verify=verify, data={"grant_type": "client_credentials"},
                        headers={"Authorization": f"Basic {basic}"})
    assert form.status_code == header.status_code == 200
    assert form.json()["access_token"] != header.json()["access_token"]
    wrong = httpx.post(url, verify=verify, data={"grant_type": "client_credentials", "client_id": sf.consumer_key,
                                                 "client_secret": "nope"})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_client"
    password = httpx.post(url, verify=verify, data={"grant_type": "password", "client_id": sf.consumer_key,
                                                    "client_secret": sf.consumer_secret, "username": sf.username,
                                                    "password": sf.password + sf.security_token})
    assert password.status_code == 200


SOAP_LOGIN = """<?xml version="1.0" encoding="utf-8" ?>
<env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
        xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:partner.soap.sforce.com">
    <env:Header><urn:CallOptions><urn:client>simple-salesforce</urn:client>
        <urn:defaultNamespace>sf</urn:defaultNamespace></urn:CallOptions></env:Header>
    <env:Body><n1:login xmlns:n1="urn:partner.soap.sforce.com">
        <n1:username>{username}</n1:username><n1:password>{password}</n1:password>
    </n1:login></env:Body>
</env:Envelope>"""


def test_soap_login_returns_a_session_and_faults_on_bad_credentials(sf: SalesforceEmulator,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    verify = ssl.create_default_context(cafile=str(sf.ca_bundle))
    url = f"{sf.instance_url}/services/Soap/u/62.0"
    headers = {"content-type": "text/xml", "charset": "UTF-8", "SOAPAction": "login"}
    good = httpx.post(url, verify=verify, headers=headers, content=SOAP_LOGIN.format(
        username=sf.username, password=sf.password + sf.security_token))
    assert good.status_code == 200 and "<sessionId>" in good.text and f"<serverUrl>{sf.instance_url}" in good.text
    bad = httpx.post(url, verify=verify, headers=headers, content=SOAP_LOGIN.format(
        username=sf.username, password=sf.password))
    assert bad.status_code == 500 and "<sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode>" in bad.text
    # simple-salesforce's own parser, pointed at the emulator through scratch_url
    session = _requests_session(sf, monkeypatch)
    session_id, instance = SalesforceLogin(username=sf.username, password=sf.password,
                                           security_token=sf.security_token, sf_version="62.0", session=session,
                                           scratch_url=sf.instance_url)
    assert instance == sf.instance_url.removeprefix("https://")
    with _client(sf, session_id) as client:
        assert client.get(f"{API}/limits").status_code == 200
    with pytest.raises(SalesforceAuthenticationFailed, match="INVALID_LOGIN"):
        SalesforceLogin(username=sf.username, password="x", security_token="y", sf_version="62.0",
                        session=session, scratch_url=sf.instance_url)


def test_an_org_with_soap_login_off_faults_every_login(sf: SalesforceEmulator) -> None:
    sf.soap_login_enabled = False  # fact sheet §0: off by default in orgs created in Winter '26 or later
    answer = httpx.post(f"{sf.instance_url}/services/Soap/u/62.0", verify=ssl.create_default_context(
        cafile=str(sf.ca_bundle)), headers={"content-type": "text/xml", "SOAPAction": "login"},
        content=SOAP_LOGIN.format(username=sf.username, password=sf.password + sf.security_token))
    assert answer.status_code == 500 and "<sf:exceptionCode>INVALID_OPERATION</sf:exceptionCode>" in answer.text


def test_simple_salesforce_composite_and_query(sf: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    session = _requests_session(sf, monkeypatch)
    client = Salesforce(session_id=sf.access_token, instance_url=sf.instance_url, version="62.0", session=session)
    result = client.restful("composite", method="POST", json={
        "allOrNone": False, "collateSubrequests": False, "compositeRequest": [
        {"method": "PATCH", "url": UPSERT_SALES, "referenceId": "sales", "body": {"records": [_sale("1-1")]}},
        {"method": "PATCH", "url": UPSERT_LINES, "referenceId": "lines", "body": {"records": [_line("1-1-1", "1-1")]}},
    ]})
    assert [r["httpStatusCode"] for r in result["compositeResponse"]] == [200, 200]
    rows = client.query("SELECT Name, Sales_Transaction__r.LS_Sale_ID__c FROM Sales_Line_Item__c")
    assert rows["records"][0]["Sales_Transaction__r"]["LS_Sale_ID__c"] == "1-1"
    assert client.api_usage["api-usage"].used == sf.api_calls == 2


def test_org_without_person_accounts_has_no_person_record_type_or_fields(tmp_path: Path) -> None:
    with SalesforceEmulator(tmp_path, person_accounts=False) as sf, _client(sf) as client:
        assert sf.person_account_record_type_id is None
        assert _query(client, "SELECT Id FROM RecordType WHERE SobjectType = 'Account' AND IsPersonType = true") == {
            "totalSize": 0, "done": True, "records": []}
        response = client.get(f"{API}/query", params={"q": "SELECT PersonEmail FROM Account"})
        assert response.status_code == 400 and response.json()[0]["errorCode"] == "INVALID_FIELD"


# ---- sObject Describe ------------------------------------------------------------------------------


def _describe(client: httpx.Client, sobject: str) -> dict:
    response = client.get(f"{API}/sobjects/{sobject}/describe")
    assert response.status_code == 200, response.text
    return response.json()


def _fields(describe: dict) -> dict[str, dict]:
    return {f["name"]: f for f in describe["fields"]}


def test_describe_gives_the_object_and_its_fields_with_salesforce_types(client: httpx.Client) -> None:
    sales = _describe(client, "sales_transaction__C")  # names resolve in any case, answers spell them right
    assert {k: sales[k] for k in ("name", "label", "custom", "createable", "updateable", "queryable", "keyPrefix")} == {
        "name": "Sales_Transaction__c", "label": "Sales Transaction", "custom": True, "createable": True,
        "updateable": True, "queryable": True, "keyPrefix": "a0A"}
    fields = _fields(sales)
    assert next(iter(fields)) == "Id" and (fields["Id"]["type"], fields["Id"]["createable"]) == ("id", False)
    name = fields["Name"]
    assert (name["type"], name["autoNumber"], name["createable"], name["updateable"], name["nillable"]) == (
        "string", True, False, False, False)
    key = fields["LS_Sale_ID__c"]
    assert (key["type"], key["length"], key["externalId"], key["unique"], key["idLookup"], key["custom"]) == (
        "string", 40, True, True, True, True)
    account = fields["Account__c"]
    assert (account["type"], account["referenceTo"], account["relationshipName"], account["cascadeDelete"],
            account["nillable"], account["updateable"]) == ("reference", ["Account"], "Account__r", False, True, True)
    status = fields["Status__c"]
    assert status["type"] == "picklist" and status["restrictedPicklist"]
    assert [v["value"] for v in status["picklistValues"]] == ["Completed", "Refund", "Voided"]
    assert {n: (fields[n]["type"], fields[n]["precision"], fields[n]["scale"])
            for n in ("Total__c", "LS_Updated_At__c")} == {"Total__c": ("currency", 16, 2),
                                                           "LS_Updated_At__c": ("datetime", 0, 0)}
    assert (fields["CreatedDate"]["createable"], fields["CreatedDate"]["updateable"]) == (False, False)
    assert sales["recordTypeInfos"] == [{
        "active": True, "available": True, "defaultRecordTypeMapping": True, "developerName": "Master", "master": True,
        "name": "Master", "recordTypeId": "012000000000000AAA",
        "urls": {"layout": f"{API}/sobjects/Sales_Transaction__c/describe/layouts/012000000000000AAA"}}]


def test_describe_of_a_detail_shows_the_master_detail_field(client: httpx.Client) -> None:
    fields = _fields(_describe(client, "Sales_Line_Item__c"))
    master = fields["Sales_Transaction__c"]
    assert (master["referenceTo"], master["relationshipName"], master["cascadeDelete"], master["relationshipOrder"],
            master["writeRequiresMasterRead"], master["nillable"]) == (
        ["Sales_Transaction__c"], "Sales_Transaction__r", True, 0, False, False)
    # not reparentable: creatable, never updateable
    assert (master["createable"], master["updateable"]) == (True, False)
    assert (fields["Quantity__c"]["type"], fields["Quantity__c"]["precision"], fields["Quantity__c"]["scale"]) == (
        "double", 12, 2)


def test_account_describe_has_the_loyalty_rollup_fields_and_record_types(
        sf: SalesforceEmulator, client: httpx.Client) -> None:
    account = _describe(client, "Account")
    fields = _fields(account)
    assert {n: (fields[n]["type"], fields[n]["precision"], fields[n]["scale"], fields[n]["createable"],
                fields[n]["updateable"], fields[n]["calculated"])
            for n in ("Lifetime_Spend__c", "Purchase_Count__c", "First_Purchase_Date__c", "Last_Purchase_Date__c")} == {
        "Lifetime_Spend__c": ("currency", 16, 2, True, True, False),
        "Purchase_Count__c": ("double", 18, 0, True, True, False),  # a Number(18,0) is still a double
        "First_Purchase_Date__c": ("datetime", 0, 0, True, True, False),
        "Last_Purchase_Date__c": ("datetime", 0, 0, True, True, False)}
    assert (fields["IsPersonAccount"]["type"], fields["IsPersonAccount"]["createable"]) == ("boolean", False)
    assert (fields["PersonEmail"]["type"], fields["PersonEmail"]["groupable"]) == ("email", False)
    [business] = _query(client, "SELECT Id FROM RecordType WHERE DeveloperName = 'Business_Account'")["records"]
    types = {(i["developerName"], i["recordTypeId"], i["defaultRecordTypeMapping"], i["master"])
             for i in account["recordTypeInfos"]}
    assert types == {("PersonAccount", sf.person_account_record_type_id, False, False),
                     ("Business_Account", business["Id"], True, False), ("Master", "012000000000000AAA", False, True)}
    seeded = client.patch(UPSERT_ACCOUNTS, json={"records": [{
        "attributes": {"type": "Account"}, "LS_Customer_ID__c": "1-1", "Name": "Acme", "Lifetime_Spend__c": 12.345,
        "Purchase_Count__c": 2, "Last_Purchase_Date__c": "2026-03-01T10:00:00Z"}]}).json()
    row = sf.get("Account", seeded[0]["id"])
    assert (row["Lifetime_Spend__c"], row["Purchase_Count__c"], row["Last_Purchase_Date__c"]) == (
        12.35, 2.0, "2026-03-01T10:00:00.000+0000")


def test_describe_of_an_unknown_object_is_404_not_found(client: httpx.Client) -> None:
    not_found = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
    response = client.get(f"{API}/sobjects/POS_Sale__c/describe")
    assert (response.status_code, response.json()) == (404, not_found)
    body = client.post(f"{API}/composite", json={"compositeRequest": [
        {"method": "GET", "url": f"{API}/sobjects/POS_Sale__c/describe", "referenceId": "d"}]}).json()
    [result] = body["compositeResponse"]
    assert (result["httpStatusCode"], result["body"]) == (404, not_found)
    assert client.post(f"{API}/sobjects/Account/describe", json={}).status_code == 405


def test_describe_subrequests_in_composite_are_not_counted_as_heavy(sf: SalesforceEmulator,
                                                                    client: httpx.Client) -> None:
    subrequests = [{"method": "PATCH", "url": UPSERT_SALES, "referenceId": f"c{i}",
                    "body": {"records": [_sale(f"1-{i}")]}} for i in range(5)]
    subrequests += [{"method": "GET", "url": f"{API}/sobjects/{name}/describe", "referenceId": f"d{i}"}
                    for i, name in enumerate(("Account", "Sales_Transaction__c", "Sales_Line_Item__c"))]
    response = client.post(f"{API}/composite", json={"compositeRequest": subrequests})
    assert response.status_code == 200
    results = response.json()["compositeResponse"]
    assert [r["httpStatusCode"] for r in results] == [200] * 8
    assert results[-1]["body"]["name"] == "Sales_Line_Item__c" and sf.api_calls == 1


# ---- schema edits ----------------------------------------------------------------------------------


def _pos_objects(sf: SalesforceEmulator) -> None:
    """The shipped objects deployed under other names, as a mapping file would describe them."""
    sf.copy_object("Sales_Transaction__c", "POS_Sale__c", renames={
        "LS_Sale_ID__c": "POS_Sale_ID__c", "Total__c": "Gross__c"}, auto_number="PS-{:07d}")
    sf.copy_object("Sales_Line_Item__c", "POS_Sale_Line__c", renames={
        "Sales_Transaction__c": "POS_Sale__c", "LS_Sale_Line_ID__c": "POS_Sale_Line_ID__c"},
        retarget={"Sales_Transaction__c": "POS_Sale__c"})


def test_renamed_copies_upsert_by_their_external_id_and_link_lines_by_relationship_reference(
        sf: SalesforceEmulator, client: httpx.Client) -> None:
    _pos_objects(sf)
    sale = {"attributes": {"type": "POS_Sale__c"}, "POS_Sale_ID__c": "1-1", "Gross__c": 10.5, "Status__c": "Completed"}
    upsert_sales = f"{API}/composite/sobjects/POS_Sale__c/POS_Sale_ID__c"
    first = client.patch(upsert_sales, json={"records": [sale]}).json()
    again = client.patch(upsert_sales, json={"records": [{**sale, "Gross__c": 11}]}).json()
    assert first[0]["created"] and (again[0]["id"], again[0]["created"]) == (first[0]["id"], False)
    assert first[0]["id"].startswith(_describe(client, "POS_Sale__c")["keyPrefix"])
    line = {"attributes": {"type": "POS_Sale_Line__c"}, "POS_Sale_Line_ID__c": "1-1-1",
            "POS_Sale__r": {"POS_Sale_ID__c": "1-1"}, "Quantity__c": 2}
    lines = client.patch(f"{API}/composite/sobjects/POS_Sale_Line__c/POS_Sale_Line_ID__c",
                         json={"records": [line, {**line, "POS_Sale_Line_ID__c": "1-1-2",
                                                  "POS_Sale__r": {"POS_Sale_ID__c": "nope"}}]}).json()
    assert lines[0]["success"], lines
    assert lines[1]["errors"][0]["message"] == (
        "Foreign key external ID: nope not found for field POS_Sale_ID__c in entity POS_Sale__c")
    [row] = _query(client, "SELECT Name, Quantity__c, pos_sale__r.Name, POS_Sale__r.Gross__c FROM POS_Sale_Line__c")[
        "records"]
    assert row["Name"].startswith("SLI-") and row["POS_Sale__r"]["Name"] == "PS-0000001"
    assert row["POS_Sale__r"]["Gross__c"] == 11.0 and row["POS_Sale__r"]["attributes"]["type"] == "POS_Sale__c"
    master = _fields(_describe(client, "POS_Sale_Line__c"))["POS_Sale__c"]
    assert (master["referenceTo"], master["relationshipName"], master["cascadeDelete"]) == (
        ["POS_Sale__c"], "POS_Sale__r", True)
    old_name = client.patch(upsert_sales, json={"records": [{**sale, "Total__c": 1}]})
    assert old_name.status_code == 400 and old_name.json()[0]["errorCode"] == "INVALID_FIELD"
    assert client.delete(f"{API}/sobjects/POS_Sale__c/POS_Sale_ID__c/1-1").status_code == 204
    assert sf.records("POS_Sale_Line__c") == [] and sf.records("Sales_Transaction__c") == []


def test_added_field_is_written_queried_and_unique_when_an_external_id(sf: SalesforceEmulator,
                                                                      client: httpx.Client) -> None:
    client.patch(UPSERT_SALES, json={"records": [_sale("1-1")]})
    sf.add_field("Sales_Transaction__c", Field("Register__c", "text", 40, external_id=True))
    [result] = client.patch(UPSERT_SALES, json={"records": [_sale("1-2", register__c="R1")]}).json()
    assert result["success"]
    rows = _query(client, "SELECT LS_Sale_ID__c, Register__c FROM Sales_Transaction__c ORDER BY LS_Sale_ID__c")
    assert [(r["LS_Sale_ID__c"], r["Register__c"]) for r in rows["records"]] == [("1-1", None), ("1-2", "R1")]
    [duplicate] = client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Register__c="r1")]}).json()
    assert duplicate["errors"][0]["statusCode"] == "DUPLICATE_VALUE"
    by_register = client.patch(f"{API}/sobjects/Sales_Transaction__c/Register__c/R1", json={"Shop_Name__c": "Paris"})
    assert by_register.status_code == 200 and by_register.json()["created"] is False
    with pytest.raises(ValueError, match="already has"):
        sf.add_field("Sales_Transaction__c", Field("register__C", "text", 10))
    with pytest.raises(ValueError, match="no object"):
        sf.add_field("Sales_Transaction__c", Field("Shop__c", "reference", reference_to="Shop__c"))


def test_removed_field_leaves_describe_queries_and_bodies(sf: SalesforceEmulator, client: httpx.Client) -> None:
    sf.remove_field("Sales_Transaction__c", "payment_methods__c")
    assert "Payment_Methods__c" not in _fields(_describe(client, "Sales_Transaction__c"))
    query = client.get(f"{API}/query", params={"q": "SELECT Payment_Methods__c FROM Sales_Transaction__c"})
    body = client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Payment_Methods__c="Cash")]})
    assert [r.status_code for r in (query, body)] == [400, 400]
    assert [r.json()[0]["errorCode"] for r in (query, body)] == ["INVALID_FIELD"] * 2
    with pytest.raises(ValueError):
        sf.remove_field("Sales_Transaction__c", "Id")


def test_calculated_field_describes_as_calculated_and_refuses_writes(sf: SalesforceEmulator,
                                                                    client: httpx.Client) -> None:
    sf.add_field("Sales_Transaction__c", Field("Net__c", "currency", 14, 2, calculated=True,
                                               formula="Total__c - Tax__c"))
    net = _fields(_describe(client, "Sales_Transaction__c"))["Net__c"]
    assert (net["calculated"], net["calculatedFormula"], net["createable"], net["updateable"]) == (
        True, "Total__c - Tax__c", False, False)
    [result] = client.patch(UPSERT_SALES, json={"records": [_sale("1-1", Net__c=5)]}).json()
    assert result["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"


def test_added_object_has_id_name_system_fields_and_a_key_prefix_of_its_own(sf: SalesforceEmulator,
                                                                           client: httpx.Client) -> None:
    sf.add_object("Loyalty_Tier__c", [Field("Code__c", "text", 40, external_id=True),
                                      Field("Account__c", "reference", reference_to="Account")], label="Tier")
    describe = _describe(client, "Loyalty_Tier__c")
    fields = _fields(describe)
    assert describe["label"] == "Tier" and describe["keyPrefix"] not in ("001", "012", "a0A", "a0B")
    assert {"Id", "Name", "CreatedDate", "IsDeleted", "Code__c"} <= set(fields)
    assert fields["Account__c"]["relationshipName"] == "Account__r"
    created = client.post(f"{API}/sobjects/Loyalty_Tier__c", json={"Name": "Gold", "Code__c": "G"}).json()
    assert created["id"].startswith(describe["keyPrefix"])
    assert _query(client, "SELECT Name FROM Loyalty_Tier__c WHERE Code__c = 'g'")["records"][0]["Name"] == "Gold"
    with pytest.raises(ValueError):
        sf.add_object("Loyalty_Tier__c")


# ---- SOQL aggregates -------------------------------------------------------------------------------


def _loyalty_sales(sf: SalesforceEmulator) -> tuple[str, str]:
    ada = sf.insert("Account", {"Name": "Ada"})
    alan = sf.insert("Account", {"Name": "Alan"})
    for key, account, when, total, status in [
            ("1-1", ada, "2026-03-01T10:00:00Z", 10.5, "Completed"),
            ("1-2", ada, "2026-02-01T09:30:00+02:00", 4.25, "Completed"),  # 07:30 UTC: the earliest
            ("1-3", ada, "2026-03-05T08:00:00Z", -4.25, "Refund"),
            ("1-4", ada, "2026-03-09T08:00:00Z", 99, "Voided"),
            ("1-5", alan, "2026-01-15T12:00:00Z", 7, "Completed")]:
        sf.insert("Sales_Transaction__c", {"LS_Sale_ID__c": key, "Account__c": account, "Transaction_Date__c": when,
                                           "Total__c": total, "Status__c": status})
    return ada, alan


def test_min_and_max_of_datetimes_come_back_as_datetime_strings_per_group(sf: SalesforceEmulator,
                                                                         client: httpx.Client) -> None:
    ada, alan = _loyalty_sales(sf)
    result = _query(client, f"SELECT Account__c, Status__c, COUNT(Id), SUM(Total__c) spend, "
                            f"MIN(Transaction_Date__c), MAX(Transaction_Date__c) FROM Sales_Transaction__c "
                            f"WHERE Account__c IN ('{ada}', '{alan}') AND Status__c IN ('Completed','Refund') "
                            f"GROUP BY Account__c, Status__c")
    rows = {(r["Account__c"], r["Status__c"]): r for r in result["records"]}
    assert (result["totalSize"], result["done"]) == (3, True)
    assert rows[(ada, "Completed")] == {
        "attributes": {"type": "AggregateResult"}, "Account__c": ada, "Status__c": "Completed", "expr0": 2,
        "spend": 14.75, "expr1": "2026-02-01T07:30:00.000+0000", "expr2": "2026-03-01T10:00:00.000+0000"}
    assert (rows[(ada, "Refund")]["spend"], rows[(ada, "Refund")]["expr2"]) == (-4.25, "2026-03-05T08:00:00.000+0000")
    assert rows[(alan, "Completed")]["expr1"] == rows[(alan, "Completed")]["expr2"] == "2026-01-15T12:00:00.000+0000"
    [none] = _query(client, "SELECT MIN(Transaction_Date__c) earliest, MAX(Total__c) FROM Sales_Transaction__c "
                            "WHERE Status__c = 'Voided' AND Total__c < 0")["records"]
    assert (none["earliest"], none["expr0"]) == (None, None)


def test_min_and_max_of_numbers_text_and_picklists(sf: SalesforceEmulator, client: httpx.Client) -> None:
    for key, shop, total, match in [("1-1", "paris", 3, "Ambiguous"), ("1-2", "Berlin", -1.5, "Email"),
                                    ("1-3", None, None, None)]:
        sf.insert("Sales_Transaction__c", {"LS_Sale_ID__c": key, "Shop_Name__c": shop, "Total__c": total,
                                           "Match_Status__c": match})
    [row] = _query(client, "SELECT MIN(Total__c) low, MAX(Total__c) high, MIN(Shop_Name__c), MAX(Shop_Name__c), "
                           "MIN(Match_Status__c) FROM Sales_Transaction__c")["records"]
    # text without regard to case; a picklist in its own value order (Email comes before Ambiguous)
    assert (row["low"], row["high"], row["expr0"], row["expr1"], row["expr2"]) == (
        -1.5, 3.0, "Berlin", "paris", "Email")
    refused = client.get(f"{API}/query", params={"q": "SELECT MAX(IsDeleted) FROM Sales_Transaction__c"})
    assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "INVALID_FIELD"


# ---- the shipped metadata --------------------------------------------------------------------------


def test_shipped_metadata_parses_and_declares_the_loyalty_fields_as_the_emulator_has_them(
        client: httpx.Client) -> None:
    documents = {path: ET.parse(path).getroot() for path in sorted(METADATA.rglob("*.xml"))}  # well-formed, all
    ns = {"md": "http://soap.sforce.com/2006/04/metadata"}
    fields = _fields(_describe(client, "Account"))
    for name in ("Lifetime_Spend__c", "Purchase_Count__c", "First_Purchase_Date__c", "Last_Purchase_Date__c"):
        shipped = documents[METADATA / "objects" / "Account" / "fields" / f"{name}.field-meta.xml"]
        kind = {"Currency": "currency", "Number": "double", "DateTime": "datetime"}[shipped.findtext("md:type", "", ns)]
        precision, scale = (int(shipped.findtext(f"md:{tag}", "0", ns)) for tag in ("precision", "scale"))
        assert (shipped.findtext("md:fullName", "", ns), kind, precision, scale) == (
            name, fields[name]["type"], fields[name]["precision"], fields[name]["scale"])
    permissions = documents[METADATA / "permissionsets" / "LSPOS_Sync_Integration.permissionset-meta.xml"]
    granted = {p.findtext("md:field", "", ns): (p.findtext("md:readable", "", ns), p.findtext("md:editable", "", ns))
               for p in permissions.iterfind("md:fieldPermissions", ns)}
    assert {name: granted.get(f"Account.{name}") for name in ("Lifetime_Spend__c", "Purchase_Count__c",
                                                              "First_Purchase_Date__c", "Last_Purchase_Date__c")} == {
        name: ("true", "true") for name in ("Lifetime_Spend__c", "Purchase_Count__c", "First_Purchase_Date__c",
                                            "Last_Purchase_Date__c")}
