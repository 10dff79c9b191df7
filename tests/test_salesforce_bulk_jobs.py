"""The Bulk API 2.0 job runner (lspos_sync/salesforce/bulk.py) against the Salesforce emulator over HTTPS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from lspos_sync.config import load_settings
from lspos_sync.errors import RunFailed
from lspos_sync.salesforce.bulk import NULL, BulkJobs, CsvSpool, flattened
from lspos_sync.salesforce.client import SalesforceClient

HEADER = ["LS_Sale_ID__c", "Status__c", "Match_Status__c", "Total__c", "Account__c"]


@pytest.fixture
def client(salesforce, monkeypatch) -> SalesforceClient:
    for name, value in salesforce.env().items():  # requests reads REQUESTS_CA_BUNDLE from the environment
        monkeypatch.setenv(name, value)
    return SalesforceClient(load_settings(salesforce.env()).salesforce)


def spool(tmp_path: Path, rows: list[dict], header: list[str] = HEADER, limit: int = 100_000_000) -> CsvSpool:
    written = CsvSpool(tmp_path, "transactions", header, limit)
    for row in rows:
        written.add(flattened(row))
    written.close()
    return written


def test_an_upsert_job_writes_the_rows_and_reports_each_failed_one_with_its_reason(salesforce, client, tmp_path):
    rows = [{"LS_Sale_ID__c": "1-1", "Status__c": "Completed", "Match_Status__c": "Guest", "Total__c": 120.0},
            {"LS_Sale_ID__c": "1-2", "Status__c": "Refund", "Match_Status__c": "Guest", "Total__c": -40.5},
            {"LS_Sale_ID__c": "1-3", "Status__c": "Lost", "Match_Status__c": "Guest", "Total__c": 1.0}]
    [path] = spool(tmp_path, rows).paths
    jobs = BulkJobs(client, first_poll=0.01)
    calls = salesforce.api_calls

    job = jobs.upsert("Sales_Transaction__c", "LS_Sale_ID__c", path)

    assert (job.processed, job.failed) == (3, 1)
    failed = list(jobs.failed_rows(job))
    assert [row["LS_Sale_ID__c"] for row in failed] == ["1-3"]
    assert failed[0]["sf__Error"].startswith("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST")
    written = list(jobs.successful_rows(job))
    assert [(row["LS_Sale_ID__c"], row["sf__Created"]) for row in written] == [("1-1", "true"), ("1-2", "true")]
    stored = {r["LS_Sale_ID__c"]: r for r in salesforce.records("Sales_Transaction__c")}
    assert (stored["1-1"]["Total__c"], stored["1-2"]["Status__c"]) == (120.0, "Refund")
    # /limits (once a run, for the API reserve), create, upload, close, two polls (the first reads InProgress),
    # failed and successful results
    assert salesforce.api_calls - calls == client.api_calls == 8


def test_an_empty_cell_leaves_a_field_as_it_is_and_none_empties_it(salesforce, client, tmp_path):
    account = salesforce.insert("Account", {"Name": "Shop"})
    jobs = BulkJobs(client, first_poll=0.01)
    for step, row in enumerate(({"LS_Sale_ID__c": "1-1", "Status__c": "Completed", "Account__c": account},
                                {"LS_Sale_ID__c": "1-1", "Match_Status__c": "Guest"})):
        (tmp_path / str(step)).mkdir()
        jobs.upsert("Sales_Transaction__c", "LS_Sale_ID__c", spool(tmp_path / str(step), [row]).paths[0])
    [kept] = salesforce.records("Sales_Transaction__c")
    assert (kept["Status__c"], kept["Match_Status__c"], kept["Account__c"]) == ("Completed", "Guest", account)
    (tmp_path / "emptied").mkdir()
    emptied = spool(tmp_path / "emptied", [{"LS_Sale_ID__c": "1-1", "Account__c": None}])
    assert NULL in emptied.paths[0].read_text()
    jobs.upsert("Sales_Transaction__c", "LS_Sale_ID__c", emptied.paths[0])
    [cleared] = salesforce.records("Sales_Transaction__c")
    assert (cleared["Status__c"], cleared["Account__c"]) == ("Completed", None)


def test_a_spool_starts_a_new_upload_before_one_would_pass_the_limit(tmp_path):
    rows = [{"LS_Sale_ID__c": f"1-{i}", "Status__c": "Completed", "Total__c": float(i)} for i in range(100)]
    written = spool(tmp_path, rows, limit=400)
    assert len(written.paths) > 1 and all(path.stat().st_size <= 400 for path in written.paths)
    lines = [line for path in written.paths for line in path.read_text().splitlines()]
    assert lines.count(",".join(HEADER)) == len(written.paths)  # every upload has its header
    assert len(lines) - len(written.paths) == written.rows == 100


def test_a_column_outside_the_header_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown__c"):
        spool(tmp_path, [{"LS_Sale_ID__c": "1-1", "Unknown__c": "x"}])


def test_a_line_points_at_its_transaction_by_the_dotted_external_id_column(salesforce, client, tmp_path):
    jobs = BulkJobs(client, first_poll=0.01)
    (tmp_path / "t").mkdir()
    jobs.upsert("Sales_Transaction__c", "LS_Sale_ID__c",
                spool(tmp_path / "t", [{"LS_Sale_ID__c": "1-1", "Status__c": "Completed"}]).paths[0])
    (tmp_path / "l").mkdir()
    lines = spool(tmp_path / "l", [{"LS_Sale_Line_ID__c": "1-10", "Sales_Transaction__r": {"LS_Sale_ID__c": "1-1"},
                                    "Quantity__c": 2.0}],
                  header=["LS_Sale_Line_ID__c", "Sales_Transaction__r.LS_Sale_ID__c", "Quantity__c"])
    jobs.upsert("Sales_Line_Item__c", "LS_Sale_Line_ID__c", lines.paths[0])
    [transaction] = salesforce.records("Sales_Transaction__c")
    [line] = salesforce.records("Sales_Line_Item__c")
    assert (line["Sales_Transaction__c"], line["Quantity__c"]) == (transaction["Id"], 2)


def test_a_job_failing_as_a_whole_fails_the_run_with_one_line(salesforce, client, tmp_path):
    salesforce.bulk.fail_next_job("InvalidBatch : Failed to process query: UNABLE_TO_LOCK_ROW")
    [path] = spool(tmp_path, [{"LS_Sale_ID__c": "1-1", "Status__c": "Completed"}]).paths
    with pytest.raises(RunFailed) as failed:
        BulkJobs(client, first_poll=0.01).upsert("Sales_Transaction__c", "LS_Sale_ID__c", path)
    message = str(failed.value)
    assert "\n" not in message and "UNABLE_TO_LOCK_ROW" in message and "failed" in message


def test_a_bad_column_fails_the_job_and_the_run_with_salesforce_s_reason(client, tmp_path):
    [path] = spool(tmp_path, [{"LS_Sale_ID__c": "1-1", "Nope__c": "x"}], header=["LS_Sale_ID__c", "Nope__c"]).paths
    with pytest.raises(RunFailed, match="Field name not found : Nope__c"):
        BulkJobs(client, first_poll=0.01).upsert("Sales_Transaction__c", "LS_Sale_ID__c", path)


def test_a_refused_job_creation_fails_the_run_with_one_line(client, tmp_path):
    [path] = spool(tmp_path, [{"LS_Sale_ID__c": "1-1"}]).paths
    with pytest.raises(RunFailed, match="INVALIDJOB") as failed:
        BulkJobs(client, first_poll=0.01).upsert("Sales_Transaction__c", "Status__c", path)
    assert "\n" not in str(failed.value)


def test_a_server_error_reading_results_is_retried(salesforce, client, tmp_path):
    [path] = spool(tmp_path, [{"LS_Sale_ID__c": "1-1", "Status__c": "Completed"}]).paths
    jobs = BulkJobs(client, first_poll=0.01)
    job = jobs.upsert("Sales_Transaction__c", "LS_Sale_ID__c", path)
    salesforce.fail_next(1, status=503, path_contains="successfulResults")
    assert [row["LS_Sale_ID__c"] for row in jobs.successful_rows(job)] == ["1-1"]


def test_a_session_that_expires_between_jobs_is_renewed_once(salesforce, monkeypatch, tmp_path):
    for name, value in salesforce.env().items():
        monkeypatch.setenv(name, value)
    settings = load_settings({**salesforce.env(), "SALESFORCE_ACCESS_TOKEN": "",
                              "SALESFORCE_CLIENT_ID": "sf-consumer-key",
                              "SALESFORCE_CLIENT_SECRET": "sf-consumer-secret"}).salesforce
    jobs = BulkJobs(SalesforceClient(settings), first_poll=0.01)
    for step in ("1", "2"):
        (tmp_path / step).mkdir()
        jobs.upsert("Sales_Transaction__c", "LS_Sale_ID__c",
                    spool(tmp_path / step, [{"LS_Sale_ID__c": f"1-{step}", "Status__c": "Completed"}]).paths[0])
        salesforce.expire_sessions()
    assert len(salesforce.records("Sales_Transaction__c")) == 2
    logins = [r for r in salesforce.requests if r.path.startswith("/services/oauth2/token")]
    assert len(logins) == 2  # the first, and one when the second job met the expired session


def test_a_bare_token_that_expires_fails_the_run_in_one_line(salesforce, client, tmp_path):
    [path] = spool(tmp_path, [{"LS_Sale_ID__c": "1-1", "Status__c": "Completed"}]).paths
    salesforce.expire_sessions()
    with pytest.raises(RunFailed, match="INVALID_SESSION_ID") as failed:
        BulkJobs(client, first_poll=0.01).upsert("Sales_Transaction__c", "LS_Sale_ID__c", path)
    assert "\n" not in str(failed.value)


class ActingFirst(requests.Session):
    """The run's HTTP session, with another client setting a job's state just before the run's n-th close of it
    (an admin aborting the job in Setup, say): `before_close` maps n to that state."""

    def __init__(self, before_close: dict[int, str]) -> None:
        super().__init__()
        self.before_close, self.closes = before_close, 0

    def request(self, method, url, *args, **kwargs):
        if method == "PATCH" and "UploadComplete" in str(kwargs.get("data")):
            self.closes += 1
            if self.closes in self.before_close:
                super().request("PATCH", url, headers=kwargs.get("headers"),
                                data=json.dumps({"state": self.before_close[self.closes]}))
        return super().request(method, url, *args, **kwargs)


def acted_on(salesforce, monkeypatch, session: ActingFirst) -> SalesforceClient:
    for name, value in salesforce.env().items():
        monkeypatch.setenv(name, value)
    return SalesforceClient(load_settings(salesforce.env()).salesforce, http=session)


def test_a_close_sent_again_after_a_lost_answer_that_finds_the_job_aborted_fails_the_run_in_one_line(
        salesforce, monkeypatch, tmp_path):
    [path] = spool(tmp_path, [{"LS_Sale_ID__c": "1-1", "Status__c": "Completed"}]).paths
    salesforce.drop_next(1, path_contains="/jobs/ingest/", body_contains="UploadComplete", after_commit=True)
    client = acted_on(salesforce, monkeypatch, ActingFirst({2: "Aborted"}))
    with pytest.raises(RunFailed, match="refused to close job .*INVALIDJOBSTATE") as failed:
        BulkJobs(client, first_poll=0.01).upsert("Sales_Transaction__c", "LS_Sale_ID__c", path)
    assert "\n" not in str(failed.value)
    assert [job["state"] for job in salesforce.bulk.jobs()] == ["Aborted"]


def test_a_first_close_refused_for_the_job_s_state_fails_the_run_though_the_job_reads_closed(
        salesforce, monkeypatch, tmp_path):
    [path] = spool(tmp_path, [{"LS_Sale_ID__c": "1-1", "Status__c": "Completed"}]).paths
    client = acted_on(salesforce, monkeypatch, ActingFirst({1: "UploadComplete"}))
    with pytest.raises(RunFailed, match="refused to close job .*INVALIDJOBSTATE") as failed:
        BulkJobs(client, first_poll=0.01).upsert("Sales_Transaction__c", "LS_Sale_ID__c", path)
    assert "\n" not in str(failed.value)
    assert [job["state"] for job in salesforce.bulk.jobs()] == ["JobComplete"]  # closed by the other client


def test_a_job_does_not_start_once_the_jobs_before_it_took_the_allowance_down_to_the_reserve(salesforce, monkeypatch,
                                                                                             tmp_path):
    salesforce.daily_api_limit = 100
    salesforce.api_calls = 87  # /limits, the first check, leaves 12: above the 10% reserve
    for name, value in salesforce.env().items():
        monkeypatch.setenv(name, value)
    client = SalesforceClient(load_settings(salesforce.env()).salesforce, reserve_percent=10)
    jobs = BulkJobs(client, first_poll=0.01)
    paths = []
    for step in ("1", "2"):
        (tmp_path / step).mkdir()
        paths.append(spool(tmp_path / step, [{"LS_Sale_ID__c": f"1-{step}", "Status__c": "Completed"}]).paths[0])
    jobs.upsert("Sales_Transaction__c", "LS_Sale_ID__c", paths[0])  # create, upload, close, two polls: 7 left

    # No REST answer since /limits told the usage: the job's calls are counted from the client's own count.
    with pytest.raises(RunFailed, match="93 of 100 requests; reserve 10% .* LSPOS_API_RESERVE_PERCENT"):
        jobs.upsert("Sales_Transaction__c", "LS_Sale_ID__c", paths[1])
    assert len(salesforce.bulk.jobs()) == 1 and salesforce.api_calls == 93
