"""Bulk API 2.0 ingest jobs on simple-salesforce's `bulk2` client: rows spooled to CSV files, one streamed
upload per job, results read back as CSV row by row.

simple-salesforce's own `upsert(csv_file=...)` holds a job's data in memory several times over and sleeps
5 s before its first poll (fact sheet §5.6), so the job calls of its `_Bulk2Client` are used one by one:
create, PUT of an open file (requests streams it), UploadComplete, polls that start short, results streamed.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pydantic_core import from_json, to_json

from lspos_sync.errors import RunFailed
from lspos_sync.retry import pause
from lspos_sync.salesforce.writer import RACED, TRANSIENT_CODES

if TYPE_CHECKING:
    from simple_salesforce.bulk2 import _Bulk2Client

    from lspos_sync.salesforce.client import SalesforceClient

log = logging.getLogger(__name__)

# One upload per job, at most 100 MB of CSV (fact sheet §6: 150 MB once base64-encoded); simple-salesforce refuses
# more than 100 MiB. A spool starts a new file (a new job) before a row would pass this.
MAX_UPLOAD = 100_000_000
NULL = "#N/A"  # a cell that empties its field; an empty cell leaves the field as it is (fact sheet §5.6)
_FINAL = ("JobComplete", "Failed", "Aborted")
_ATTEMPTS = 5
_FIRST_POLL = 0.1  # seconds before the first poll, doubled after each up to _LONGEST_POLL
_LONGEST_POLL = 10.0
# Rows refused for a passing reason: sent again as often, after pauses as long, as on the composite path.
_RETRIES, _RETRY_PAUSE = 4, 1.0


def cell(value: Any) -> str:
    """A record value as a Bulk API 2.0 CSV cell: None empties the field (`#N/A`); booleans in lower case."""
    if value is None:
        return NULL
    if value is True or value is False:
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def flattened(record: dict[str, Any]) -> dict[str, Any]:
    """A record as CSV columns: a reference `{"Parent__r": {"Key__c": v}}` becomes the column `Parent__r.Key__c`;
    `attributes` is left out."""
    columns: dict[str, Any] = {}
    for name, value in record.items():
        if name == "attributes":
            continue
        if isinstance(value, dict):
            columns.update({f"{name}.{field}": inner for field, inner in value.items()})
        else:
            columns[name] = value
    return columns


class CsvSpool:
    """Rows of one object, written to CSV files in `directory` as they come, a new file before one would pass
    `limit` bytes: each file is one job's upload. A column a row does not have is an empty cell (the field
    is left as it is); a value None is `#N/A` (the field is emptied)."""

    def __init__(self, directory: Path, name: str, header: list[str], limit: int = MAX_UPLOAD) -> None:
        self.directory, self.name, self.header, self.limit = directory, name, list(header), limit
        self._index = {column: i for i, column in enumerate(self.header)}
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, lineterminator="\n")
        self._header_line = self._line(self.header)
        self.paths: list[Path] = []
        self.rows = 0
        self._file: io.BufferedWriter | None = None
        self._size = 0

    def add(self, columns: dict[str, Any]) -> None:
        cells = [""] * len(self.header)
        for column, value in columns.items():
            index = self._index.get(column)
            if index is None:
                raise ValueError(f"{self.name}: column {column} is not in the job's header")
            cells[index] = cell(value)
        line = self._line(cells)
        if self._file is None or self._size + len(line) > self.limit:
            self._start()
        assert self._file is not None
        self._file.write(line)
        self._size += len(line)
        self.rows += 1

    def close(self) -> list[Path]:
        """The files written, closed."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return self.paths

    def _start(self) -> None:
        self.close()
        path = self.directory / f"{self.name}-{len(self.paths) + 1}.csv"
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close(), the spool's directory is temporary
        self._file.write(self._header_line)
        self._size = len(self._header_line)
        if self._size >= self.limit:
            raise ValueError(f"{self.name}: the header alone is larger than an upload may be")
        self.paths.append(path)

    def _line(self, cells: list[str]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        self._csv.writerow(cells)
        return self._buffer.getvalue().encode()


@dataclass
class Job:
    """A finished ingest job: its Id, object, and what Salesforce says it processed and failed."""

    id: str
    sobject: str
    processed: int
    failed: int


class BulkJobs:
    """Ingest jobs through `bulk2`. Each HTTP request is one API call, counted on the Salesforce client."""

    def __init__(self, client: SalesforceClient, first_poll: float = _FIRST_POLL) -> None:
        self._client = client
        self._first_poll = first_poll

    def upsert(self, sobject: str, external_id: str, path: Path) -> Job:
        """One upsert job of the CSV file at `path` (at most MAX_UPLOAD bytes) by `external_id`, run to its end.
        A job that fails as a whole (a bad column, a limit) fails the run with Salesforce's one-line reason:
        what it wrote is written again by the next run, upserts by key being harmless to repeat."""
        return self.run("upsert", sobject, path, external_id)

    def update(self, sobject: str, path: Path) -> Job:
        """One update job (records by their `Id` column), as `upsert`."""
        return self.run("update", sobject, path)

    def run(self, operation: str, sobject: str, path: Path, external_id: str | None = None) -> Job:
        if path.stat().st_size > MAX_UPLOAD:
            raise ValueError(f"{path.name}: an upload is at most {MAX_UPLOAD} bytes")
        self._client.ensure_allowance()
        info = self._request(sobject, lambda jobs: jobs.create_job(operation, external_id_field=external_id),
                             "create a job")
        job_id = info["id"]
        log.info("Bulk API 2.0 job %s: %s of %s%s (%.1f MB)", job_id, operation, sobject,
                 f" by {external_id}" if external_id else "", path.stat().st_size / 1e6,
                 extra={"phase": "bulk", "job": job_id})
        self._upload(sobject, job_id, path)
        self._request(sobject, lambda jobs: jobs.close_job(job_id), f"close job {job_id}")
        info = self._wait(sobject, job_id)
        if info["state"] != "JobComplete":
            reason = str(info.get("errorMessage") or info["state"]).replace("\n", " ").strip()
            raise RunFailed(f"Salesforce Bulk API 2.0 job {job_id} ({sobject} {operation}) {info['state'].lower()}: "
                            f"{reason}; nothing after it was written, and the backfill resumes where it stopped")
        return Job(job_id, sobject, int(info.get("numberRecordsProcessed") or 0),
                   int(info.get("numberRecordsFailed") or 0))

    def failed_rows(self, job: Job) -> Iterator[dict[str, str]]:
        """The rows the job failed, each with `sf__Error` and the columns as uploaded, read as they arrive."""
        if job.failed:
            yield from self._results(job, "failedResults")

    def successful_rows(self, job: Job) -> Iterator[dict[str, str]]:
        """The rows the job wrote, each with `sf__Id`, `sf__Created` and the columns as uploaded."""
        if job.processed > job.failed:
            yield from self._results(job, "successfulResults")

    # -- the calls
    def _jobs(self, sobject: str) -> _Bulk2Client:
        """The job calls for `sobject`, on the run's simple-salesforce connection. A bulk2 handler keeps the token
        it was built with (fact sheet §5.6), so it is taken afresh each time: after a renewal it has the new one."""
        return getattr(self._client.sf.bulk2, sobject)._client

    def _upload(self, sobject: str, job_id: str, path: Path) -> None:
        """The file as the job's one upload, streamed from disk (requests sends an open file with its length)."""
        def put(jobs: _Bulk2Client) -> Any:
            headers = jobs._get_headers(jobs.CSV_CONTENT_TYPE, jobs.JSON_CONTENT_TYPE)
            with open(path, "rb") as upload:
                return self._send(jobs, "PUT", f"{jobs.bulk2_url}ingest/{job_id}/batches", headers=headers,
                                  data=upload)

        # Not retried: a second PUT on a job makes its close fail ("Found multiple contents", fact sheet §5.6).
        self._request(sobject, put, f"upload to job {job_id}", attempts=1)

    def _wait(self, sobject: str, job_id: str) -> dict[str, Any]:
        delay = self._first_poll
        while True:
            time.sleep(delay)
            info = self._request(sobject, lambda jobs: jobs.get_job(job_id, False), f"read job {job_id}")
            if info.get("state") in _FINAL:
                return info
            delay = min(delay * 2, _LONGEST_POLL)

    def _results(self, job: Job, kind: str) -> Iterator[dict[str, str]]:
        def get(jobs: _Bulk2Client) -> Any:
            headers = jobs._get_headers(jobs.JSON_CONTENT_TYPE, jobs.CSV_CONTENT_TYPE)
            return self._send(jobs, "GET", f"{jobs.bulk2_url}ingest/{job.id}/{kind}", headers=headers, stream=True)

        response = self._request(job.sobject, get, f"read the {kind} of job {job.id}")
        with response:
            response.raw.decode_content = True
            response.raw.auto_close = False  # io.TextIOWrapper reads past the end once; urllib3 would have closed it
            text = io.TextIOWrapper(response.raw, encoding="utf-8-sig", newline="")
            yield from csv.DictReader(text)

    def _send(self, jobs: _Bulk2Client, method: str, url: str, **kwargs: Any) -> Any:
        from simple_salesforce.util import call_salesforce

        return call_salesforce(url=url, method=method, session=jobs.session, **kwargs)

    def _request(self, sobject: str, call: Callable[[_Bulk2Client], Any], what: str,
                 attempts: int = _ATTEMPTS) -> Any:
        """One call (one API call) on `sobject`'s job calls, tried again on a dropped connection or a server
        error, and once after renewing a session that expired (the request was not executed); a refusal fails
        the run in one line."""
        import requests
        from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession, SalesforceGeneralError

        renewed = False
        attempt = 0
        while True:
            self._client.api_calls += 1
            try:
                return call(self._jobs(sobject))
            except (requests.RequestException, SalesforceGeneralError) as error:
                status = getattr(error, "status", None)
                if (status is not None and status < 500) or attempt + 1 >= attempts:
                    raise RunFailed(f"Salesforce Bulk API 2.0: could not {what}: {_described(error)}") from None
                delay = pause(attempt)
                attempt += 1
                log.info("Salesforce Bulk API 2.0: %s on %s; retrying in %.1f s", _described(error), what, delay)
                time.sleep(delay)
            except SalesforceExpiredSession:
                session = self._client._session
                if renewed or session is None or not session.renewable:
                    raise RunFailed("Salesforce rejected the session during a Bulk API 2.0 job (INVALID_SESSION_ID):"
                                    " renew SALESFORCE_ACCESS_TOKEN (or use a login the tool can renew) and run the "
                                    "backfill again; it resumes where it stopped") from None
                log.info("Salesforce session expired; logging in again")
                self._client.connect()
                renewed = True
            except SalesforceError as error:
                raise RunFailed(f"Salesforce Bulk API 2.0 refused to {what}: {_described(error)}") from None


def _described(error: Exception) -> str:
    content = getattr(error, "content", None)
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return f"{content[0].get('errorCode')}: {content[0].get('message')}"
    return f"{type(error).__name__}: {str(error)[:200]}".replace("\n", " ")


class RowSpool:
    """Records of one kind, kept on disk as JSON lines while a round gathers them (their columns are known only
    at the end: a record leaves out what it does not set), then written out as the CSV uploads of its jobs."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory, self.name = directory, name
        self.path = directory / f"{name}.jsonl"
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by uploads(); the directory is temporary
        self._columns: dict[str, None] = {}
        self.rows = 0

    def add(self, columns: dict[str, Any]) -> None:
        self._columns.update(dict.fromkeys(columns))
        self._file.write(to_json(columns) + b"\n")
        self.rows += 1

    def uploads(self, limit: int = MAX_UPLOAD) -> list[Path]:
        """The rows as CSV files of at most `limit` bytes, each under the header of every column a row set."""
        self._file.close()
        csv_spool = CsvSpool(self.directory, self.name, list(self._columns), limit)
        with open(self.path, "rb") as rows:
            for line in rows:
                csv_spool.add(from_json(line))
        self.path.unlink()
        return csv_spool.close()


class BulkWriter:
    """The Writer of a bulk backfill: a round's writes, spooled to disk as they are handed over, go to Salesforce
    in `flush` as Bulk API 2.0 ingest jobs, accounts first (new ones upserted by LS_Customer_ID__c, matched ones
    updated by Id), then transactions, then lines (upserts by external ID; a line names its transaction by a
    `Sales_Transaction__r.LS_Sale_ID__c` column); stale lines are deleted by Id through the Composite API, as the
    composite path deletes them, before the lines job (a line moved to another sale of the round is written anew).

    The writes themselves are not kept (a round holds a hundred thousand sales): their outcomes come back by row.
    `on_failed(kind, key, reason)` is told each refused row, by the key that names it (the customer key of a new
    account, the Id of an updated one, the sale key of a transaction, of a line, of a deleted line);
    `on_written[kind](key, id, created)`, where given, each row written (reading them costs a call a job).
    Queries go straight to the REST API: nothing a round holds is read before it is flushed.

    Rows refused for a passing reason (UNABLE_TO_LOCK_ROW while another integration holds the same records, a
    busy server) go again in a new job of the same object and operation, after a growing pause, up to 4 times
    (an upsert refused DUPLICATE_VALUE, which raced another client's upsert of the same new key, once),
    as the composite writer sends its records again; only then is a kind done and the next sent, so a
    line never meets a transaction refused for a passing reason, only one still refused after the retries."""

    def __init__(self, client: SalesforceClient, directory: Path, composite: Any,
                 on_failed: Callable[[str, str, str], None],
                 on_written: dict[str, Callable[[str, str, bool], None]] | None = None,
                 jobs: BulkJobs | None = None) -> None:
        from lspos_sync.writing import WriteStats

        self._client = client
        self._directory = directory
        self._composite = composite  # the REST writer: queries, and the deletes of stale lines
        self._on_failed = on_failed
        self._on_written = on_written or {}
        self._jobs = jobs or BulkJobs(client)
        self._spools: dict[str, RowSpool] = {}
        self._deletes: list[Any] = []
        self.stats = WriteStats()

    def write(self, writes: list[Any]) -> None:
        from lspos_sync.writing import DELETE_LINES

        names = self._client.field_map
        for write in writes:
            if write.kind == DELETE_LINES:
                self._deletes.append(write)
                continue
            spool = self._spools.get(write.kind)
            if spool is None:
                spool = self._spools[write.kind] = RowSpool(self._directory, write.kind)
            record = dict(write.record)
            if "id" in record:  # an update by Id: the column is `Id`
                record["Id"] = record.pop("id")
            spool.add(flattened(names.outgoing(_OBJECTS[write.kind], record)))

    def queries(self, statements: list[str], optional: frozenset[int] = frozenset(),
                *, after_lines: bool = False) -> list[list[dict[str, Any]] | None]:
        return self._composite.queries(statements, optional, after_lines=after_lines)

    def flush(self) -> None:
        """Every held write to Salesforce, kind after kind; each refused row told to `on_failed`."""
        from lspos_sync.mapping import CUSTOMER_KEY, LINE, LINE_KEY, SALE_KEY, TRANSACTION
        from lspos_sync.writing import CREATE_ACCOUNTS, LINES, TRANSACTIONS, UPDATE_ACCOUNTS

        names = self._client.field_map
        sale_key = names.field(TRANSACTION, SALE_KEY)
        [parent] = flattened(names.outgoing(LINE, {"Sales_Transaction__r": {SALE_KEY: ""}}))
        keyed_by = {CREATE_ACCOUNTS: names.field("Account", CUSTOMER_KEY), UPDATE_ACCOUNTS: "Id",
                    TRANSACTIONS: sale_key, LINES: parent}
        external = {CREATE_ACCOUNTS: names.field("Account", CUSTOMER_KEY), TRANSACTIONS: sale_key,
                    LINES: names.field(LINE, LINE_KEY)}
        for kind in (CREATE_ACCOUNTS, UPDATE_ACCOUNTS, TRANSACTIONS, LINES):
            if kind == LINES and self._deletes:  # stale lines before lines, as on the composite path (writing.ORDER)
                deletes, self._deletes = self._deletes, []
                self.delete(deletes)
            spool = self._spools.pop(kind, None)
            if spool is None:
                continue
            sobject = names.obj(_OBJECTS[kind])
            uploads = spool.uploads()
            for attempt in range(_RETRIES + 1):
                # The rows refused for a passing reason, kept on disk as the round's rows are, to go again.
                again = RowSpool(self._directory, f"{kind}-again-{attempt + 1}") if attempt < _RETRIES else None
                for path in uploads:
                    job = self._jobs.upsert(sobject, external[kind], path) if kind in external \
                        else self._jobs.update(sobject, path)
                    path.unlink()
                    self.stats.records[kind] = self.stats.records.get(kind, 0) + job.processed - job.failed
                    for row in self._jobs.failed_rows(job):
                        error = row.pop("sf__Error", "")
                        row.pop("sf__Id", None)
                        if again is not None and (_transient(error) or (attempt == 0 and kind in external
                                                                         and _raced(error))):
                            again.add(row)
                        else:
                            self._on_failed(kind, row.get(keyed_by[kind], ""), _sf_error(error))
                    if (written := self._on_written.get(kind)) is not None:
                        for row in self._jobs.successful_rows(job):
                            written(row.get(keyed_by[kind], ""), row["sf__Id"], row.get("sf__Created") == "true")
                if again is None or not again.rows:
                    break
                uploads = again.uploads()
                delay = pause(attempt, base=_RETRY_PAUSE)
                log.info("Salesforce refused %d %s row(s) for a passing reason; retrying in %.1f s", again.rows,
                         sobject, delay, extra={"phase": "bulk"})
                time.sleep(delay)

    def delete(self, deletes: list[Any]) -> None:
        """Stale lines, by Id, through the Composite API; each refusal told to `on_failed` by sale key."""
        from lspos_sync.writing import DELETE_LINES

        self._composite.write(deletes)
        self._composite.flush()
        for write in deletes:
            if write.error:
                for key in write.sale_keys:
                    self._on_failed(DELETE_LINES, key, write.error)
        self.stats.records[DELETE_LINES] = self._composite.stats.records.get(DELETE_LINES, 0)


def _sf_error(text: str) -> str:
    """`STATUS_CODE:message:Fields --` (several joined by a space) as the composite path words a refusal:
    `STATUS_CODE: message (Fields)`, joined by `; `."""
    parts = [f"{code}: {message}" + (f" ({fields.replace(',', ', ')})" if fields else "")
             for code, message, fields in _SF_ERROR.findall(text)]
    return "; ".join(parts) or text.strip()


_SF_ERROR = re.compile(r"([A-Z][A-Z_]*):(.*?):([\w,]*) ?--")


def _transient(text: str) -> bool:
    """Whether an `sf__Error` names a code that means "not now" rather than "no"."""
    return any(code in TRANSIENT_CODES for code, _, _ in _SF_ERROR.findall(text))


# The object of each kind of write (in the contract's names).
_OBJECTS = {"create_accounts": "Account", "update_accounts": "Account", "transactions": "Sales_Transaction__c",
            "lines": "Sales_Line_Item__c"}


def _raced(text: str) -> bool:
    """Whether an `sf__Error` says an upsert raced another (DUPLICATE_VALUE)."""
    return any(code == RACED for code, _, _ in _SF_ERROR.findall(text))
