"""Tests for the Salesforce emulator's Bulk API 2.0 ingest jobs, from the Bulk API 2.0 reference, driven over
real HTTPS with plain `requests` and with simple-salesforce's `bulk2`."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceOperationError

from lspos_sync.emulators.salesforce import SalesforceEmulator

API = "/services/data/v62.0"
INGEST = f"{API}/jobs/ingest"
SALES_CSV = "LS_Sale_ID__c,Status__c,Match_Status__c,Total__c\n1-1,Completed,Guest,120.00\n1-2,Refund,Guest,-40.5\n"


@pytest.fixture
def sf(tmp_path: Path) -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(tmp_path / "tls") as emulator:
        yield emulator


class Bulk:
    """The ingest resource over plain HTTPS, one method per documented request."""

    def __init__(self, sf: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
        # requests lets REQUESTS_CA_BUNDLE override session.verify, so the environment must name the emulator's CA
        for name, value in sf.env().items():
            monkeypatch.setenv(name, value)
        self.base = sf.instance_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {sf.access_token}"

    def create(self, sobject: str, operation: str = "upsert", external_id: str | None = None,
               **options: str) -> requests.Response:
        body = {"object": sobject, "operation": operation, "contentType": "CSV", **options}
        if external_id:
            body["externalIdFieldName"] = external_id
        return self.session.post(f"{self.base}{INGEST}", json=body)

    def open(self, sobject: str, operation: str = "upsert", external_id: str | None = None, **options: str) -> str:
        response = self.create(sobject, operation, external_id, **options)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def upload(self, job_id: str, data: str | bytes) -> requests.Response:
        return self.session.put(f"{self.base}{INGEST}/{job_id}/batches", data=data if isinstance(data, bytes)
                                else data.encode(), headers={"Content-Type": "text/csv"})

    def set_state(self, job_id: str, state: str) -> requests.Response:
        return self.session.patch(f"{self.base}{INGEST}/{job_id}", json={"state": state})

    def info(self, job_id: str) -> dict:
        response = self.session.get(f"{self.base}{INGEST}/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def results(self, job_id: str, kind: str) -> requests.Response:
        return self.session.get(f"{self.base}{INGEST}/{job_id}/{kind}", headers={"Accept": "text/csv"})

    def rows(self, job_id: str, kind: str) -> list[dict[str, str]]:
        response = self.results(job_id, kind)
        assert response.status_code == 200 and response.headers["Content-Type"] == "text/csv", response.text
        return list(csv.DictReader(io.StringIO(response.text)))

    def run(self, sobject: str, data: str, operation: str = "upsert", external_id: str | None = None) -> dict:
        """A whole job: create, upload, close, poll until it is done; returns the final job info."""
        job_id = self.open(sobject, operation, external_id)
        assert self.upload(job_id, data).status_code == 201
        assert self.set_state(job_id, "UploadComplete").status_code == 200
        while (info := self.info(job_id))["state"] == "InProgress":
            pass
        return info


@pytest.fixture
def bulk(sf: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> Bulk:
    return Bulk(sf, monkeypatch)


def _simple_salesforce(sf: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> Salesforce:
    for name, value in sf.env().items():
        monkeypatch.setenv(name, value)
    return Salesforce(instance_url=sf.instance_url, session_id=sf.access_token, version="62.0",
                      session=requests.Session())


def _by(records: list[dict], key: str) -> dict[str, dict]:
    return {r[key]: r for r in records}


# ---- the lifecycle ---------------------------------------------------------------------------------


def test_job_reads_open_then_upload_complete_then_in_progress_before_job_complete(sf: SalesforceEmulator,
                                                                                   bulk: Bulk) -> None:
    created = bulk.create("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    assert created.status_code == 200
    job = created.json()
    assert job["state"] == "Open" and job["id"].startswith("750") and len(job["id"]) == 18
    assert {k: job[k] for k in ("operation", "object", "externalIdFieldName", "contentType", "lineEnding",
                                "columnDelimiter", "apiVersion", "concurrencyMode")} == {
        "operation": "upsert", "object": "Sales_Transaction__c", "externalIdFieldName": "LS_Sale_ID__c",
        "contentType": "CSV", "lineEnding": "LF", "columnDelimiter": "COMMA", "apiVersion": 62.0,
        "concurrencyMode": "Parallel"}
    assert job["contentUrl"] == f"services/data/v62.0/jobs/ingest/{job['id']}/batches"

    uploaded = bulk.upload(job["id"], SALES_CSV)
    assert uploaded.status_code == 201 and uploaded.content == b""
    closed = bulk.set_state(job["id"], "UploadComplete")
    assert closed.status_code == 200 and closed.json()["state"] == "UploadComplete"
    assert "contentUrl" not in closed.json()

    polling = bulk.info(job["id"])
    assert polling["state"] == "InProgress" and polling["numberRecordsProcessed"] == 0
    done = bulk.info(job["id"])
    assert done["state"] == "JobComplete" and done["jobType"] == "V2Ingest"
    assert (done["numberRecordsProcessed"], done["numberRecordsFailed"], done["retries"]) == (2, 0, 0)
    assert "errorMessage" not in done
    assert sorted(r["LS_Sale_ID__c"] for r in sf.records("Sales_Transaction__c")) == ["1-1", "1-2"]


def test_in_progress_polls_are_configurable(sf: SalesforceEmulator, bulk: Bulk) -> None:
    sf.bulk.in_progress_polls = 3
    job_id = bulk.open("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    bulk.upload(job_id, SALES_CSV)
    bulk.set_state(job_id, "UploadComplete")
    assert [bulk.info(job_id)["state"] for _ in range(5)] == ["InProgress"] * 3 + ["JobComplete"] * 2
    sf.bulk.in_progress_polls = 0
    assert bulk.run("Sales_Transaction__c", SALES_CSV, external_id="LS_Sale_ID__c")["state"] == "JobComplete"


def test_an_upload_streamed_in_chunks_is_read_whole(sf: SalesforceEmulator, bulk: Bulk) -> None:
    job_id = bulk.open("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    lines = SALES_CSV.encode().splitlines(keepends=True)
    # a generator body goes out with Transfer-Encoding: chunked, as a streaming writer sends it
    response = bulk.session.put(f"{bulk.base}{INGEST}/{job_id}/batches", data=(line for line in lines),
                                headers={"Content-Type": "text/csv"})
    assert response.status_code == 201
    assert sf.requests[-1].body == SALES_CSV
    bulk.set_state(job_id, "UploadComplete")
    bulk.info(job_id)
    assert bulk.info(job_id)["numberRecordsProcessed"] == 2


def test_all_jobs_are_listed(bulk: Bulk) -> None:
    first = bulk.open("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    second = bulk.open("Account", "insert")
    listing = bulk.session.get(f"{bulk.base}{INGEST}").json()
    assert listing["done"] is True and [j["id"] for j in listing["records"]] == [first, second]


# ---- results -----------------------------------------------------------------------------------------


def test_successful_results_give_sf_id_and_sf_created_then_the_uploaded_columns(sf: SalesforceEmulator,
                                                                                 bulk: Bulk) -> None:
    sf.insert("Sales_Transaction__c", {"LS_Sale_ID__c": "1-1", "Status__c": "Completed", "Match_Status__c": "Guest"})
    info = bulk.run("Sales_Transaction__c", SALES_CSV, external_id="LS_Sale_ID__c")
    response = bulk.results(info["id"], "successfulResults")
    assert response.text.splitlines()[0] == \
        '"sf__Id","sf__Created","LS_Sale_ID__c","Status__c","Match_Status__c","Total__c"'
    rows = _by(bulk.rows(info["id"], "successfulResults"), "LS_Sale_ID__c")
    stored = _by(sf.records("Sales_Transaction__c"), "LS_Sale_ID__c")
    assert rows["1-1"] == {"sf__Id": stored["1-1"]["Id"], "sf__Created": "false", "LS_Sale_ID__c": "1-1",
                           "Status__c": "Completed", "Match_Status__c": "Guest", "Total__c": "120.00"}
    assert rows["1-2"]["sf__Id"] == stored["1-2"]["Id"] and rows["1-2"]["sf__Created"] == "true"
    assert stored["1-2"]["Total__c"] == -40.5
    assert bulk.rows(info["id"], "failedResults") == []
    assert bulk.results(info["id"], "failedResults").text == '"sf__Id","sf__Error","LS_Sale_ID__c","Status__c",' \
                                                             '"Match_Status__c","Total__c"\n'
    assert bulk.results(info["id"], "unprocessedrecords").text == "LS_Sale_ID__c,Status__c,Match_Status__c,Total__c\n"


def test_failed_rows_carry_sf_error_from_the_same_rules_as_collections(sf: SalesforceEmulator, bulk: Bulk) -> None:
    sf.add_validation_rule("Account", lambda r: r.get("FirstName") == "Blocked", "No blocked customers")
    person = sf.person_account_record_type_id
    data = ("LS_Customer_ID__c,RecordTypeId,FirstName,LastName,PersonEmail\n"
            f"1-1,{person},Ada,Lovelace,ada@example.com\n"
            f"1-2,{person},Nobody,,\n"
            f"1-3,{person},Blocked,Smith,\n"
            f"1-4,{person},Bad,Email,not-an-email\n"
            f"1-5,{person},Twice,One,\n"
            f"1-5,{person},Twice,Two,\n"
            f",{person},No,Key,\n")
    info = bulk.run("Account", data, external_id="LS_Customer_ID__c")
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (7, 6)
    errors = [(r["LS_Customer_ID__c"], r["sf__Id"], r["sf__Error"]) for r in bulk.rows(info["id"], "failedResults")]
    assert errors == [
        ("1-2", "", "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --"),
        ("1-3", "", "FIELD_CUSTOM_VALIDATION_EXCEPTION:No blocked customers:--"),
        ("1-4", "", "INVALID_EMAIL_ADDRESS:Email: invalid email address: not-an-email:PersonEmail --"),
        ("1-5", "", "DUPLICATE_VALUE:Duplicate external id specified: 1-5:LS_Customer_ID__c --"),
        ("1-5", "", "DUPLICATE_VALUE:Duplicate external id specified: 1-5:LS_Customer_ID__c --"),
        ("", "", "MISSING_ARGUMENT:LS_Customer_ID__c not specified:LS_Customer_ID__c --")]
    [ada] = sf.records("Account")
    assert ada["IsPersonAccount"] and ada["Name"] == "Ada Lovelace" and ada["RecordTypeId"] == person


@pytest.mark.parametrize("column, cell, error", [
    ("Total__c", "12,50", "INVALID_TYPE_ON_FIELD_IN_RECORD:Total: value not of required type: 12,50:Total__c --"),
    ("Transaction_Date__c", "yesterday",
     "INVALID_TYPE_ON_FIELD_IN_RECORD:Transaction Date: value not of required type: yesterday:Transaction_Date__c --"),
    ("Status__c", "Lost", ("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:Status: bad value for restricted picklist "
                          "field: Lost:Status__c --")),
    ("Name", "ST-9", ("INVALID_FIELD_FOR_INSERT_UPDATE:Unable to create/update fields: Name. Please check the "
                     "security settings of this field and verify that it is read/write for your profile or "
                     "permission set.:Name --")),
])
def test_a_value_the_field_cannot_take_fails_its_row(bulk: Bulk, column: str, cell: str, error: str) -> None:
    info = bulk.run("Sales_Transaction__c", f'LS_Sale_ID__c,{column}\n1-1,"{cell}"\n', external_id="LS_Sale_ID__c")
    [row] = bulk.rows(info["id"], "failedResults")
    assert row["sf__Error"] == error and row[column] == cell


def test_relationship_column_finds_the_parent_by_its_external_id(sf: SalesforceEmulator, bulk: Bulk) -> None:
    bulk.run("Sales_Transaction__c", SALES_CSV, external_id="LS_Sale_ID__c")
    data = ("LS_Sale_Line_ID__c,Sales_Transaction__r.LS_Sale_ID__c,Quantity__c,Line_Total__c\n"
            "1-1-1,1-1,1,120.00\n"
            "1-9-1,1-9,2,10.00\n"
            "1-1-2,,1,5.00\n")
    info = bulk.run("Sales_Line_Item__c", data, external_id="LS_Sale_Line_ID__c")
    [line] = sf.records("Sales_Line_Item__c")
    sale = _by(sf.records("Sales_Transaction__c"), "LS_Sale_ID__c")["1-1"]
    assert line["LS_Sale_Line_ID__c"] == "1-1-1" and line["Sales_Transaction__c"] == sale["Id"]
    failed = _by(bulk.rows(info["id"], "failedResults"), "LS_Sale_Line_ID__c")
    assert failed["1-9-1"]["sf__Error"] == ("INVALID_FIELD:Foreign key external ID: 1-9 not found for field "
                                            "LS_Sale_ID__c in entity Sales_Transaction__c:--")
    assert failed["1-9-1"]["Sales_Transaction__r.LS_Sale_ID__c"] == "1-9"
    # an empty cell sends no parent, and the master-detail field is required
    assert failed["1-1-2"]["sf__Error"] == ("REQUIRED_FIELD_MISSING:Required fields are missing: "
                                            "[Sales_Transaction__c]:Sales_Transaction__c --")


def test_a_row_whose_key_matches_several_records_fails_with_duplicate_external_id(sf: SalesforceEmulator,
                                                                                   bulk: Bulk) -> None:
    from lspos_sync.emulators.salesforce import Field

    sf.remove_field("Sales_Transaction__c", "LS_Sale_ID__c")  # External ID, not Unique (fact sheet §1.3)
    sf.add_field("Sales_Transaction__c", Field("LS_Sale_ID__c", "text", 40, external_id=True, unique=False))
    for _ in range(2):
        sf.insert("Sales_Transaction__c", {"LS_Sale_ID__c": "1-1", "Status__c": "Completed"})
    info = bulk.run("Sales_Transaction__c", SALES_CSV, external_id="LS_Sale_ID__c")
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (2, 1)
    [failed] = bulk.rows(info["id"], "failedResults")
    assert failed["LS_Sale_ID__c"] == "1-1" and failed["sf__Id"] == ""
    assert failed["sf__Error"].startswith("DUPLICATE_EXTERNAL_ID:LS Sale ID: more than one record found")


def test_an_empty_cell_leaves_a_field_as_it_is_and_na_empties_it(sf: SalesforceEmulator, bulk: Bulk) -> None:
    sf.insert("Sales_Transaction__c", {"LS_Sale_ID__c": "1-1", "Status__c": "Completed", "Match_Status__c": "Email",
                                       "Ticket_Number__c": "T-1", "Shop_Name__c": "Paris", "Total__c": 10})
    info = bulk.run("Sales_Transaction__c", "LS_Sale_ID__c,Ticket_Number__c,Shop_Name__c,Total__c\n"
                                            "1-1,,#N/A,#N/A\n", external_id="LS_Sale_ID__c")
    assert info["numberRecordsFailed"] == 0
    [sale] = sf.records("Sales_Transaction__c")
    assert (sale["Ticket_Number__c"], sale["Shop_Name__c"], sale["Total__c"]) == ("T-1", None, None)


# ---- whole-job failures --------------------------------------------------------------------------------


def test_an_unknown_column_fails_the_whole_job_and_leaves_every_row_unprocessed(sf: SalesforceEmulator,
                                                                                 bulk: Bulk) -> None:
    job_id = bulk.open("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    bulk.upload(job_id, "LS_Sale_ID__c,Foo__c\n1-1,x\n1-2,y\n")
    closed = bulk.set_state(job_id, "UploadComplete")
    assert closed.status_code == 200 and closed.json()["state"] == "UploadComplete"
    assert bulk.info(job_id)["state"] == "InProgress"
    info = bulk.info(job_id)
    assert info["state"] == "Failed" and info["errorMessage"] == "InvalidBatch : Field name not found : Foo__c"
    assert (info["numberRecordsProcessed"], info["numberRecordsFailed"]) == (0, 0)
    assert bulk.rows(job_id, "successfulResults") == bulk.rows(job_id, "failedResults") == []
    assert bulk.results(job_id, "unprocessedrecords").text == "LS_Sale_ID__c,Foo__c\n1-1,x\n1-2,y\n"
    assert sf.records("Sales_Transaction__c") == []


@pytest.mark.parametrize("header", ["Sales_Transaction__r.Ticket_Number__c", "Parent__r.LS_Sale_ID__c"])
def test_a_relationship_column_needs_a_relationship_and_an_external_id(bulk: Bulk, header: str) -> None:
    info = bulk.run("Sales_Line_Item__c", f"LS_Sale_Line_ID__c,{header}\n1-1-1,1-1\n",
                    external_id="LS_Sale_Line_ID__c")
    assert info["state"] == "Failed" and info["errorMessage"] == f"InvalidBatch : Field name not found : {header}"


def test_crlf_data_in_an_lf_job_fails_the_job(bulk: Bulk) -> None:
    info = bulk.run("Sales_Transaction__c", SALES_CSV.replace("\n", "\r\n"), external_id="LS_Sale_ID__c")
    assert info["state"] == "Failed"
    assert info["errorMessage"] == ("ClientInputError : LineEnding is invalid on user data. Current LineEnding "
                                    "setting is LF")


def test_a_crlf_job_with_another_delimiter_reads_its_data(sf: SalesforceEmulator, bulk: Bulk) -> None:
    job_id = bulk.open("Sales_Transaction__c", external_id="LS_Sale_ID__c", lineEnding="CRLF",
                       columnDelimiter="SEMICOLON")
    bulk.upload(job_id, SALES_CSV.replace(",", ";").replace("\n", "\r\n"))
    bulk.set_state(job_id, "UploadComplete")
    bulk.info(job_id)
    assert bulk.info(job_id)["numberRecordsProcessed"] == 2 and len(sf.records("Sales_Transaction__c")) == 2


def test_fail_next_job_processes_some_rows_and_leaves_the_rest_unprocessed(sf: SalesforceEmulator,
                                                                          bulk: Bulk) -> None:
    sf.bulk.fail_next_job("InvalidBatch : Failed to process query: UNABLE_TO_LOCK_ROW", after_rows=1)
    info = bulk.run("Sales_Transaction__c", SALES_CSV, external_id="LS_Sale_ID__c")
    assert info["state"] == "Failed" and info["errorMessage"] == ("InvalidBatch : Failed to process query: "
                                                                  "UNABLE_TO_LOCK_ROW")
    assert info["numberRecordsProcessed"] == 1
    assert [r["LS_Sale_ID__c"] for r in bulk.rows(info["id"], "successfulResults")] == ["1-1"]
    assert bulk.results(info["id"], "unprocessedrecords").text == \
        "LS_Sale_ID__c,Status__c,Match_Status__c,Total__c\n1-2,Refund,Guest,-40.5\n"
    assert [r["LS_Sale_ID__c"] for r in sf.records("Sales_Transaction__c")] == ["1-1"]
    assert bulk.run("Sales_Transaction__c", SALES_CSV, external_id="LS_Sale_ID__c")["state"] == "JobComplete"


# ---- refused requests --------------------------------------------------------------------------------


def test_a_second_upload_is_taken_but_the_close_is_refused(sf: SalesforceEmulator, bulk: Bulk) -> None:
    job_id = bulk.open("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    assert bulk.upload(job_id, SALES_CSV).status_code == 201
    assert bulk.upload(job_id, SALES_CSV).status_code == 201
    refused = bulk.set_state(job_id, "UploadComplete")
    assert refused.status_code == 400
    [error] = refused.json()
    assert error["errorCode"] == "INVALIDJOB"
    assert error["message"].startswith(f"Found multiple contents for job: <{job_id[:15]}>")
    assert "make sure you only do 'PUT' once on a given Job" in error["message"]
    assert bulk.info(job_id)["state"] == "Open"
    assert bulk.set_state(job_id, "Aborted").json()["state"] == "Aborted"
    assert sf.records("Sales_Transaction__c") == []
    assert bulk.results(job_id, "unprocessedrecords").status_code == 200


@pytest.mark.parametrize("body, code, message", [
    ({"object": "Nope__c", "operation": "insert"}, "INVALIDJOB", "InvalidJob : Unable to find object: Nope__c"),
    ({"object": "Account", "operation": "upsert", "externalIdFieldName": "Name"}, "INVALIDJOB",
     "InvalidJob : Field name provided, Name does not match an External ID for Account"),
    ({"object": "Account", "operation": "merge"}, "API_ERROR",
     "Invalid value: 'merge' supplied for property: 'operation'"),
    ({"object": "Account", "operation": "insert", "contentType": "JSON"}, "API_ERROR",
     "Invalid value: 'JSON' supplied for property: 'contentType'"),
])
def test_a_job_is_refused_for_an_unknown_object_operation_or_external_id(bulk: Bulk, body: dict, code: str,
                                                                        message: str) -> None:
    response = bulk.session.post(f"{bulk.base}{INGEST}", json=body)
    assert response.status_code == 400 and response.json() == [{"message": message, "errorCode": code}]


def test_requests_out_of_turn_are_refused_with_invalid_job_state(bulk: Bulk) -> None:
    job_id = bulk.open("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    early = bulk.results(job_id, "successfulResults")
    assert early.status_code == 400 and early.json()[0]["errorCode"] == "INVALIDJOBSTATE"
    bulk.upload(job_id, SALES_CSV)
    bulk.set_state(job_id, "UploadComplete")
    assert bulk.upload(job_id, SALES_CSV).json()[0]["errorCode"] == "INVALIDJOBSTATE"
    assert bulk.set_state(job_id, "UploadComplete").json()[0]["errorCode"] == "INVALIDJOBSTATE"
    while bulk.info(job_id)["state"] != "JobComplete":
        pass
    aborted = bulk.set_state(job_id, "Aborted")
    assert aborted.status_code == 400 and aborted.json() == [
        {"message": "Aborting already Completed Job not allowed", "errorCode": "INVALIDJOBSTATE"}]
    assert bulk.session.delete(f"{bulk.base}{INGEST}/{job_id}").status_code == 204
    assert bulk.session.get(f"{bulk.base}{INGEST}/{job_id}").status_code == 404


# ---- other operations, other objects ---------------------------------------------------------------------


def test_update_by_id_and_delete_by_id(sf: SalesforceEmulator, bulk: Bulk) -> None:
    sale = sf.insert("Sales_Transaction__c", {"LS_Sale_ID__c": "1-1", "Status__c": "Completed",
                                              "Match_Status__c": "Guest"})
    kept = sf.insert("Sales_Line_Item__c", {"LS_Sale_Line_ID__c": "1-1-1", "Sales_Transaction__c": sale})
    removed = sf.insert("Sales_Line_Item__c", {"LS_Sale_Line_ID__c": "1-1-2", "Sales_Transaction__c": sale})
    updated = bulk.run("Sales_Transaction__c", f"Id,Status__c\n{sale},Voided\n{removed},Voided\n,Voided\n",
                       operation="update")
    assert sf.get("Sales_Transaction__c", sale)["Status__c"] == "Voided"
    assert [(r["sf__Id"], r["sf__Created"]) for r in bulk.rows(updated["id"], "successfulResults")] == [
        (sale, "false")]
    assert [r["sf__Error"].split(":")[0] for r in bulk.rows(updated["id"], "failedResults")] == [
        "MALFORMED_ID", "MISSING_ARGUMENT"]

    deleted = bulk.run("Sales_Line_Item__c", f"Id\n{removed}\n{removed}\n", operation="delete")
    assert [r["LS_Sale_Line_ID__c"] for r in sf.records("Sales_Line_Item__c")] == ["1-1-1"]
    assert [r["sf__Id"] for r in bulk.rows(deleted["id"], "successfulResults")] == [removed]
    [again] = bulk.rows(deleted["id"], "failedResults")
    assert again["sf__Id"] == removed and again["sf__Error"] == "ENTITY_IS_DELETED:entity is deleted:--"
    assert sf.get("Sales_Line_Item__c", kept) is not None


def test_insert_and_upsert_by_id(sf: SalesforceEmulator, bulk: Bulk) -> None:
    inserted = bulk.run("Account", "Name,Phone\nAcme,+15550100\n", operation="insert")
    [acme] = bulk.rows(inserted["id"], "successfulResults")
    assert acme["sf__Created"] == "true" and sf.get("Account", acme["sf__Id"])["Name"] == "Acme"
    upserted = bulk.run("Account", f"Id,Name\n{acme['sf__Id']},Acme Ltd\n,Globex\n", external_id="Id")
    assert [r["sf__Created"] for r in bulk.rows(upserted["id"], "successfulResults")] == ["false", "true"]
    assert sorted(r["Name"] for r in sf.records("Account")) == ["Acme Ltd", "Globex"]


def test_renamed_objects_take_bulk_jobs_with_their_own_relationship_names(sf: SalesforceEmulator,
                                                                          bulk: Bulk) -> None:
    sf.copy_object("Sales_Transaction__c", "POS_Sale__c", renames={"LS_Sale_ID__c": "Sale_Key__c"})
    sf.copy_object("Sales_Line_Item__c", "POS_Line__c", renames={"Sales_Transaction__c": "POS_Sale__c"},
                   retarget={"Sales_Transaction__c": "POS_Sale__c"})
    bulk.run("POS_Sale__c", "Sale_Key__c,Status__c\n1-1,Completed\n", external_id="Sale_Key__c")
    info = bulk.run("POS_Line__c", "LS_Sale_Line_ID__c,POS_Sale__r.Sale_Key__c\n1-1-1,1-1\n",
                    external_id="LS_Sale_Line_ID__c")
    assert info["numberRecordsFailed"] == 0
    [line] = sf.records("POS_Line__c")
    assert line["POS_Sale__c"] == sf.records("POS_Sale__c")[0]["Id"]


# ---- counting and faults ---------------------------------------------------------------------------------


def test_every_bulk_request_counts_one_api_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SalesforceEmulator(tmp_path, daily_api_limit=7) as sf:
        bulk = Bulk(sf, monkeypatch)
        info = bulk.run("Sales_Transaction__c", SALES_CSV, external_id="LS_Sale_ID__c")  # 5 requests
        assert sf.api_calls == 5
        response = bulk.results(info["id"], "successfulResults")
        assert response.headers["Sforce-Limit-Info"] == "api-usage=6/7"
        bulk.results(info["id"], "failedResults")
        refused = bulk.results(info["id"], "unprocessedrecords")
        assert refused.status_code == 403 and refused.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
        assert sf.api_calls == 7


def test_injected_faults_apply_to_bulk_requests(sf: SalesforceEmulator, bulk: Bulk) -> None:
    sf.fail_next(path_contains="/jobs/ingest")
    failed = bulk.create("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    assert failed.status_code == 503 and failed.json()[0]["errorCode"] == "SERVER_UNAVAILABLE"
    assert sf.api_calls == 0
    job_id = bulk.open("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    bulk.upload(job_id, SALES_CSV)
    sf.drop_next(path_contains=f"/jobs/ingest/{job_id}", body_contains="UploadComplete")
    with pytest.raises(requests.ConnectionError):
        bulk.set_state(job_id, "UploadComplete")
    assert bulk.info(job_id)["state"] == "InProgress"  # the close took effect; only its answer was lost
    assert len(sf.records("Sales_Transaction__c")) == 2


def test_a_lock_storm_refuses_every_row_of_a_batch_of_its_object_and_saves_none(sf: SalesforceEmulator,
                                                                                bulk: Bulk) -> None:
    sf.lock_storm(2, "Sales_Transaction__c")
    person = sf.person_account_record_type_id
    accounts = bulk.run("Account", f"LS_Customer_ID__c,RecordTypeId,LastName\n1-1,{person},Lima\n",
                        external_id="LS_Customer_ID__c")
    assert accounts["numberRecordsFailed"] == 0 and sf.lock_storm_left == 2
    locked = bulk.run("Sales_Transaction__c", SALES_CSV, external_id="LS_Sale_ID__c")
    assert (locked["state"], locked["numberRecordsProcessed"], locked["numberRecordsFailed"]) == ("JobComplete", 2, 2)
    assert [(r["LS_Sale_ID__c"], r["sf__Id"], r["sf__Error"]) for r in bulk.rows(locked["id"], "failedResults")] == [
        (key, "", "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record:--") for key in ("1-1", "1-2")]
    assert sf.records("Sales_Transaction__c") == [] and sf.lock_storm_left == 1
    updated = bulk.run("Sales_Transaction__c", "LS_Sale_ID__c,Status__c,Match_Status__c,Total__c\n"
                       + "".join(f"1-{i},Completed,Guest,1\n" for i in range(10_001)), external_id="LS_Sale_ID__c")
    failed = bulk.rows(updated["id"], "failedResults")
    assert len(failed) == 10_000 and {r["sf__Error"].split(":")[0] for r in failed} == {"UNABLE_TO_LOCK_ROW"}
    assert [t["LS_Sale_ID__c"] for t in sf.records("Sales_Transaction__c")] == ["1-10000"]  # the second batch
    assert sf.lock_storm_left == 0


def test_a_lock_storm_names_the_record_of_a_refused_update_row(sf: SalesforceEmulator, bulk: Bulk) -> None:
    sf.lock_storm(1)
    record_id = sf.insert("Account", {"Name": "Acme"})
    info = bulk.run("Account", f"Id,Name\n{record_id},Acme Ltd\n", operation="update")
    [row] = bulk.rows(info["id"], "failedResults")
    assert (row["sf__Id"], row["sf__Error"]) == (record_id, "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access "
                                                           "to this record:--")
    assert sf.records("Account")[0]["Name"] == "Acme"


def test_an_expired_session_is_refused_on_bulk_requests(sf: SalesforceEmulator, bulk: Bulk) -> None:
    sf.expire_sessions()
    response = bulk.create("Sales_Transaction__c", external_id="LS_Sale_ID__c")
    assert response.status_code == 401 and response.json()[0]["errorCode"] == "INVALID_SESSION_ID"


# ---- simple-salesforce's bulk2 against the emulator ------------------------------------------------------


def test_simple_salesforce_bulk2_upserts_parents_then_children_and_reads_the_results(
        sf: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _simple_salesforce(sf, monkeypatch)
    sales = [{"LS_Sale_ID__c": "1-1", "Status__c": "Completed", "Match_Status__c": "Guest", "Total__c": "120.00"},
             {"LS_Sale_ID__c": "1-2", "Status__c": "Lost", "Match_Status__c": "Guest", "Total__c": None}]
    [summary] = client.bulk2.Sales_Transaction__c.upsert(records=sales, external_id_field="LS_Sale_ID__c", wait=0)
    assert (summary["numberRecordsProcessed"], summary["numberRecordsFailed"], summary["numberRecordsTotal"]) == (
        2, 1, 2)
    results = client.bulk2.Sales_Transaction__c.get_all_ingest_records(summary["job_id"])
    [ok], [failed] = results["successfulRecords"], results["failedRecords"]
    assert ok["sf__Created"] == "true" and ok["LS_Sale_ID__c"] == "1-1"
    assert failed["sf__Error"].startswith("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST:")
    assert results["unprocessedRecords"] == []

    lines = [{"LS_Sale_Line_ID__c": "1-1-1", "Sales_Transaction__r.LS_Sale_ID__c": "1-1", "Quantity__c": "1"}]
    [summary] = client.bulk2.Sales_Line_Item__c.upsert(records=lines, external_id_field="LS_Sale_Line_ID__c",
                                                       wait=0)
    assert summary["numberRecordsFailed"] == 0
    [line] = sf.records("Sales_Line_Item__c")
    assert line["Sales_Transaction__c"] == ok["sf__Id"]
    # create, upload, close, InProgress, JobComplete, job info, three results; create, upload, close, three polls
    assert sf.api_calls == 9 + 6


def test_simple_salesforce_bulk2_raises_on_a_failed_job_with_its_error_message(
        sf: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _simple_salesforce(sf, monkeypatch)
    with pytest.raises(SalesforceOperationError, match="InvalidBatch : Field name not found : Foo__c"):
        client.bulk2.Sales_Transaction__c.upsert(records=[{"LS_Sale_ID__c": "1-1", "Foo__c": "x"}],
                                                 external_id_field="LS_Sale_ID__c", wait=0)
    [job] = sf.bulk.jobs()
    assert job["state"] == "Failed"


def test_simple_salesforce_bulk2_deletes_by_id(sf: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    sale = sf.insert("Sales_Transaction__c", {"LS_Sale_ID__c": "1-1", "Status__c": "Completed",
                                              "Match_Status__c": "Guest"})
    line = sf.insert("Sales_Line_Item__c", {"LS_Sale_Line_ID__c": "1-1-1", "Sales_Transaction__c": sale})
    client = _simple_salesforce(sf, monkeypatch)
    [summary] = client.bulk2.Sales_Line_Item__c.delete(records=[{"Id": line}], wait=0)
    assert summary["numberRecordsFailed"] == 0 and sf.records("Sales_Line_Item__c") == []


# ---- the same records as Collections -------------------------------------------------------------------


def _stored(sf: SalesforceEmulator) -> dict[str, list[dict[str, Any]]]:
    """The org's sales, lines and accounts without what differs between two orgs (Ids, system times)."""
    varying = {"Id", "CreatedDate", "LastModifiedDate", "SystemModstamp"}
    keys = {r["Id"]: r["LS_Sale_ID__c"] for r in sf.records("Sales_Transaction__c")} | {
        r["Id"]: r["LS_Customer_ID__c"] for r in sf.records("Account")}
    references = ("Sales_Transaction__c", "Account__c")  # an Id of the org, compared by its parent's key
    return {sobject: sorted(({k: keys.get(v) if k in references else v for k, v in r.items() if k not in varying}
                             for r in sf.records(sobject)), key=repr)
            for sobject in ("Account", "Sales_Transaction__c", "Sales_Line_Item__c")}


def test_a_bulk_upsert_stores_the_same_records_as_a_collections_upsert(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    accounts = [{"LS_Customer_ID__c": "1-7", "FirstName": "Ada", "LastName": "Lovelace",
                 "PersonEmail": "ada@example.com", "PersonMobilePhone": "+33612345678"},
                {"LS_Customer_ID__c": "1-8", "FirstName": "No", "LastName": None}]
    sales = [{"LS_Sale_ID__c": "1-1", "Status__c": "Completed", "Match_Status__c": "Created", "Total__c": "120.50",
              "Transaction_Date__c": "2026-03-01T09:30:00Z", "Account__r": {"LS_Customer_ID__c": "1-7"}},
             {"LS_Sale_ID__c": "1-2", "Status__c": "Refund", "Match_Status__c": "Guest", "Total__c": "-40"}]
    lines = [{"LS_Sale_Line_ID__c": "1-1-1", "Sales_Transaction__r": {"LS_Sale_ID__c": "1-1"},
              "Quantity__c": "1", "Unit_Price__c": "120.505", "SKU__c": "SCARF-01"},
             {"LS_Sale_Line_ID__c": "1-2-1", "Sales_Transaction__r": {"LS_Sale_ID__c": "1-2"},
              "Quantity__c": "-1", "Unit_Price__c": "40"},
             {"LS_Sale_Line_ID__c": "1-3-1", "Sales_Transaction__r": {"LS_Sale_ID__c": "1-3"}}]
    orgs = []
    for name in ("collections", "bulk"):
        sf = SalesforceEmulator(tmp_path / name)
        sf.start()
        orgs.append(sf)
        person = sf.person_account_record_type_id
        batches = [("Account", "LS_Customer_ID__c", [{"RecordTypeId": person, **a} for a in accounts]),
                   ("Sales_Transaction__c", "LS_Sale_ID__c", sales),
                   ("Sales_Line_Item__c", "LS_Sale_Line_ID__c", lines)]
        bulk = Bulk(sf, monkeypatch)
        for sobject, key, records in batches:
            if name == "bulk":
                bulk.run(sobject, _as_csv(records), external_id=key)
                continue
            body = {"allOrNone": False, "records": [{"attributes": {"type": sobject}, **r} for r in records]}
            response = bulk.session.patch(f"{sf.instance_url}{API}/composite/sobjects/{sobject}/{key}", json=body)
            assert response.status_code == 200, response.text
    try:
        assert _stored(orgs[0]) == _stored(orgs[1])
        assert len(orgs[1].records("Sales_Line_Item__c")) == 2 and len(orgs[1].records("Account")) == 1
    finally:
        for sf in orgs:
            sf.stop()


def _as_csv(records: list[dict]) -> str:
    """Records as a job's CSV: a nested parent reference becomes a dotted column, None an empty cell."""
    flat = [{(f"{k}.{next(iter(v))}" if isinstance(v, dict) else k): (next(iter(v.values()))
                                                                       if isinstance(v, dict) else v)
             for k, v in r.items()} for r in records]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue()

