"""Bulk API 2.0 ingest jobs for the Salesforce emulator: CSV in, the org's own record rules per row, CSV results out.

Each row is saved through the same code as an sObject Collections record, so a row fails in a job exactly
when that record would fail in a Collections upsert. The emulator's request handler routes
`/services/data/vXX.X/jobs/ingest...` here, inside its store lock and after counting the request as one API
call. Where the Bulk API 2.0 reference is silent, the choices are listed in docs/emulators.md.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

from .http import Request, Response
from .salesforce import (USER_ID, ApiError, Field, RecordError, SalesforceEmulator, _coerce, _label, _normalize_id,
                         _with_checksum)

OLDEST_VERSION = 41.0  # Bulk API 2.0 ingest exists from API v41.0
OPERATIONS = ("insert", "update", "upsert", "delete")
DELIMITERS = {"BACKQUOTE": "`", "CARET": "^", "COMMA": ",", "PIPE": "|", "SEMICOLON": ";", "TAB": "\t"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
RESULTS = ("successfulresults", "failedresults", "unprocessedrecords")
NULL = "#N/A"  # a cell that empties its field; an empty cell leaves the field as it is
_FINAL = ("JobComplete", "Failed", "Aborted")
BATCH_ROWS = 10_000  # Salesforce cuts a job's rows into batches of 10,000 (fact sheet §6)
_LOCKED = [{"statusCode": "UNABLE_TO_LOCK_ROW", "message": "unable to obtain exclusive access to this record",
            "fields": []}]


@dataclass
class _Outcome:
    """What became of one row: a record Id, and either whether it was created or the sf__Error text."""

    record_id: str
    created: bool = False
    error: str | None = None


@dataclass
class Job:
    id: str
    object: str
    operation: str
    external_id: str | None
    line_ending: str
    delimiter: str
    api_version: str
    created: str
    state: str = "Open"
    modified: str = ""
    uploads: list[bytes] = field(default_factory=list)
    outcomes: list[_Outcome] = field(default_factory=list)
    error_message: str | None = None
    final_state: str = "JobComplete"  # what the job reads once its InProgress polls are used up
    polls_left: int = 0


@dataclass
class _JobFailure:
    message: str
    after_rows: int


class BulkIngest:
    """The org's Bulk API 2.0 ingest resource. Test hooks: `in_progress_polls`, `fail_next_job()`, `job()`."""

    def __init__(self, org: SalesforceEmulator) -> None:
        self.org = org
        # Job info reads InProgress on this many GETs after UploadComplete, then JobComplete (or Failed).
        self.in_progress_polls = 1
        self._jobs: dict[str, Job] = {}
        self._failures: list[_JobFailure] = []

    # ---- test hooks (no API call counted) ----------------------------------------------------------

    def fail_next_job(self, message: str = "InvalidBatch : Failed to process query: UNABLE_TO_LOCK_ROW",
                      after_rows: int = 0) -> None:
        """The next job closed with a readable header fails as a whole, as when a batch still fails after
        Salesforce's retries: its first `after_rows` rows are processed (and written), the rest are left
        unprocessed, and its job info reads Failed with `message` as errorMessage."""
        self._failures.append(_JobFailure(message, after_rows))

    def job(self, job_id: str) -> dict:
        """The job's info as the API would show it once complete, without taking a poll or counting a call."""
        with self.org._lock:
            job = self._jobs[_normalize_id(job_id) or job_id]
            return self._info(job, job.final_state if job.state == "UploadComplete" else job.state)

    def jobs(self) -> list[dict]:
        """Every job's info, in the order they were created, as `job()` gives it."""
        with self.org._lock:
            return [self.job(job_id) for job_id in self._jobs]

    # ---- routing -----------------------------------------------------------------------------------

    def handle(self, request: Request, version: str, rest: str) -> Response:
        """Answer one request under `/jobs/...`; the caller has authenticated and counted it."""
        segments = rest.strip("/").split("/")
        try:
            if not OLDEST_VERSION <= float(version) <= float(self.org.api_version) or segments[:2] != [
                    "jobs", "ingest"]:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            match segments[2:], request.method:
                case [], "POST":
                    return self._create(_json(request.body), version)
                case [], "GET":
                    return Response(200, {"done": True, "records": [self._info(j, self._shown_state(j, poll=False))
                                                                     for j in self._jobs.values()],
                                          "nextRecordsUrl": None})
                case [job_id], "GET":
                    job = self._job(job_id)
                    return Response(200, self._info(job, self._shown_state(job, poll=True)))
                case [job_id], "PATCH":
                    return self._set_state(self._job(job_id), _json(request.body))
                case [job_id], "DELETE":
                    return self._delete(self._job(job_id))
                case [job_id, "batches"], "PUT":
                    return self._upload(self._job(job_id), request.body)
                case [job_id, results], "GET" if results.lower() in RESULTS:
                    return self._results(self._job(job_id), results.lower())
                case [] | [_] | [_, "batches"], _:
                    raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed")
                case [_, results], _ if results.lower() in RESULTS:
                    raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{request.method}' not allowed")
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        except ApiError as error:
            return error.response()

    def _job(self, raw_id: str) -> Job:
        job = self._jobs.get(_normalize_id(raw_id) or "")
        if job is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    # ---- the lifecycle -----------------------------------------------------------------------------

    def _create(self, body: Any, version: str) -> Response:
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        operation = body.get("operation")
        if operation not in OPERATIONS:
            raise ApiError(400, "API_ERROR", f"Invalid value: '{operation or ''}' supplied for property: 'operation'")
        for name, allowed in (("contentType", ("CSV",)), ("lineEnding", LINE_ENDINGS),
                              ("columnDelimiter", DELIMITERS)):
            if name in body and body[name] not in allowed:
                raise ApiError(400, "API_ERROR", f"Invalid value: '{body[name]}' supplied for property: '{name}'")
        sobject = self.org._objects_ci.get(str(body.get("object") or "").lower())
        if sobject is None:
            raise ApiError(400, "INVALIDJOB", f"InvalidJob : Unable to find object: {body.get('object') or ''}")
        external_id = body.get("externalIdFieldName")
        if operation == "upsert":
            found = self.org._fields_ci[sobject].get(str(external_id or "").lower())
            if found is None or not (found.external_id or found.kind == "id"):
                raise ApiError(400, "INVALIDJOB", f"InvalidJob : Field name provided, {external_id or ''} does not "
                                                  f"match an External ID for {sobject}")
            external_id = found.name
        now = self.org._timestamp()
        job_id = _with_checksum(f"7505g{next(self.org._ids):010d}")
        job = Job(job_id, sobject, operation, external_id if operation == "upsert" else None,
                  body.get("lineEnding", "LF"), body.get("columnDelimiter", "COMMA"), version, now, modified=now)
        self._jobs[job_id] = job
        return Response(200, self._info(job, "Open", summary=True))

    def _upload(self, job: Job, data: bytes) -> Response:
        if job.state != "Open":
            raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is not Open: it is {job.state}")
        if not data:
            raise ApiError(400, "INVALIDJOB", "InvalidJob : No content found in the request body")
        # A second upload is taken here and refused at UploadComplete (fact sheet §5.6).
        job.uploads.append(data)
        return Response(201)

    def _set_state(self, job: Job, body: Any) -> Response:
        state = body.get("state") if isinstance(body, dict) else None
        if state not in ("UploadComplete", "Aborted"):
            raise ApiError(400, "INVALIDJOBSTATE" if state in ("Open", "InProgress", "JobComplete", "Failed")
                           else "API_ERROR", f"Invalid value: '{state or ''}' supplied for property: 'state'")
        shown = self._shown_state(job, poll=False)
        if state == "Aborted":
            if shown in _FINAL:
                word = "Completed" if shown == "JobComplete" else shown
                raise ApiError(400, "INVALIDJOBSTATE", f"Aborting already {word} Job not allowed")
            job.state, job.polls_left, job.modified = "Aborted", 0, self.org._timestamp()
            return Response(200, self._info(job, "Aborted", summary=True))
        if job.state != "Open":
            word = "Completed" if shown == "JobComplete" else shown
            raise ApiError(400, "INVALIDJOBSTATE", f"Closing already {word} Job not allowed")
        if len(job.uploads) > 1:
            raise ApiError(400, "INVALIDJOB", f"Found multiple contents for job: <{job.id[:15]}>, please 'Close' / "
                           "'Abort' / 'Delete' the current Job then create a new Job and make sure you only do 'PUT' "
                           "once on a given Job.")
        job.modified = self.org._timestamp()
        self._run(job)
        job.state, job.polls_left = "UploadComplete", self.in_progress_polls
        return Response(200, self._info(job, "UploadComplete", summary=True))

    def _shown_state(self, job: Job, poll: bool) -> str:
        """The state a request sees. A closed job reads InProgress until its polls are used up."""
        if job.state != "UploadComplete":
            return job.state
        if job.polls_left > 0:
            if poll:
                job.polls_left -= 1
            return "InProgress"
        job.state = job.final_state
        return job.state

    def _delete(self, job: Job) -> Response:
        shown = self._shown_state(job, poll=False)
        if shown not in ("UploadComplete", *_FINAL):
            raise ApiError(400, "INVALIDJOBSTATE", f"Deleting a job in state {shown} is not allowed")
        del self._jobs[job.id]
        return Response(204)

    # ---- processing --------------------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        """Process the upload as Salesforce does after UploadComplete: the header first (a bad one fails the
        whole job, no row processed), then each row on its own."""
        data = job.uploads[0] if job.uploads else b""
        try:
            header = self._check_header(job, data)
        except _WholeJobFailure as failed:
            job.final_state, job.error_message = "Failed", failed.message
            return
        failure = self._failures.pop(0) if self._failures else None
        limit = failure.after_rows if failure else None
        keys = self._key_counts(job, header, data) if job.operation == "upsert" else Counter()
        locked = False
        for number, row in enumerate(itertools.islice(self._rows(job, data), limit)):
            if number % BATCH_ROWS == 0:  # a lock storm refuses a whole batch, as it does a whole collection
                locked = self.org._take_lock_storm({job.object})
            job.outcomes.append(self._locked(header, row) if locked else self._process(job, header, row, keys))
        if failure:
            job.final_state, job.error_message = "Failed", failure.message

    def _check_header(self, job: Job, data: bytes) -> list[tuple[str, Field]]:
        """Each column as (relationship or "", field): a field of the object, or an external ID field of the
        parent named by a `Relationship__r.Field` column."""
        if not data:
            raise _WholeJobFailure("InvalidBatch : Records not processed")
        first_line, newline, _ = data.partition(b"\n")
        if newline and (job.line_ending == "LF") == first_line.endswith(b"\r"):
            raise _WholeJobFailure(f"ClientInputError : LineEnding is invalid on user data. Current LineEnding "
                                   f"setting is {job.line_ending}")
        try:
            reader = self._reader(job, data)
            names = next(reader)
            for _ in reader:  # every row must be readable before any is processed
                pass
        except (StopIteration, UnicodeDecodeError, csv.Error):
            raise _WholeJobFailure("InvalidBatch : Records not processed") from None
        fields_ci, columns = self.org._fields_ci[job.object], []
        for name in names:
            relationship, dot, parent_field = name.partition(".")
            if dot:
                ref = self.org._relationships[job.object].get(relationship.lower())
                target = self.org._fields_ci[ref.reference_to or ""].get(parent_field.lower()) if ref else None
                if ref is None or target is None or not target.external_id:
                    raise _WholeJobFailure(f"InvalidBatch : Field name not found : {name}")
                columns.append((ref.relationship or "", target))
            elif name.lower() in fields_ci:
                columns.append(("", fields_ci[name.lower()]))
            else:
                raise _WholeJobFailure(f"InvalidBatch : Field name not found : {name}")
        if job.operation == "delete" and [f.name for _, f in columns] != ["Id"]:
            raise _WholeJobFailure("InvalidBatch : The 'delete' batch must contain only 'Id' column")
        return columns

    def _reader(self, job: Job, data: bytes) -> Iterator[list[str]]:
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
        return csv.reader(text, delimiter=DELIMITERS[job.delimiter], strict=True)

    def _rows(self, job: Job, data: bytes) -> Iterator[list[str]]:
        """The data rows, up to the first that cannot be read (the header was read before)."""
        rows = self._reader(job, data)
        try:
            next(rows)
            for row in rows:
                if row:
                    yield row
        except (csv.Error, UnicodeDecodeError):
            return

    def _key_counts(self, job: Job, header: list[tuple[str, Field]], data: bytes) -> Counter:
        """How often each external ID occurs in the job: a key given twice fails both rows, as in Collections."""
        index = next((i for i, (rel, f) in enumerate(header) if not rel and f.name == job.external_id), None)
        if index is None or job.external_id == "Id":
            return Counter()
        return Counter(row[index].casefold() for row in self._rows(job, data) if index < len(row) and row[index])

    def _process(self, job: Job, header: list[tuple[str, Field]], row: list[str], keys: Counter) -> _Outcome:
        org, sobject = self.org, job.object
        record_id = ""
        try:
            if len(row) != len(header):
                raise RecordError("INVALID_FIELD", f"The row has {len(row)} values for {len(header)} columns")
            values: dict[str, Any] = {}
            for (relationship, f), cell in zip(header, row):
                if cell == "":
                    continue  # an empty cell leaves the field as it is
                if relationship:
                    values[relationship] = None if cell == NULL else {f.name: cell}
                elif f.name == "Id":
                    record_id = cell
                else:
                    values[f.name] = None if cell == NULL else _typed(f, cell)
            if job.operation == "delete":
                record_id = self._existing_id(sobject, record_id)
                org._delete(sobject, record_id)
                return _Outcome(record_id)
            if job.operation == "insert":
                if record_id:
                    raise RecordError("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
                return _Outcome(org._save(sobject, values, None), created=True)
            if job.operation == "update" or (job.operation == "upsert" and job.external_id == "Id" and record_id):
                if not record_id:
                    raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call")
                record_id = self._existing_id(sobject, record_id)
                org._save(sobject, values, org._rows[sobject][record_id])
                return _Outcome(record_id)
            if job.external_id == "Id":
                return _Outcome(org._save(sobject, values, None), created=True)
            if record_id:
                raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE", "Unable to create/update fields: Id. Please "
                                  "check the security settings of this field and verify that it is read/write for "
                                  "your profile or permission set.", ["Id"])
            key = values.get(job.external_id or "")
            if key is None:
                raise RecordError("MISSING_ARGUMENT", f"{job.external_id} not specified", [job.external_id or ""])
            if keys[key.casefold()] > 1:
                raise RecordError("DUPLICATE_VALUE", f"Duplicate external id specified: {key}", [job.external_id or ""])
            existing_id = org._match_one(sobject, org._schema[sobject][job.external_id or ""], key)
            existing = org._rows[sobject][existing_id] if existing_id else None
            if existing is None:
                org._lose_race(sobject, job.external_id or "", values)
            return _Outcome(org._save(sobject, values, existing), created=existing is None)
        except RecordError as error:
            return _Outcome(record_id if _normalize_id(record_id) else "", error=_sf_error(error.errors))

    def _locked(self, header: list[tuple[str, Field]], row: list[str]) -> _Outcome:
        """A row of a batch refused by a lock storm: nothing saved; an update's row names its record."""
        record_id = next((cell for (relationship, f), cell in zip(header, row)
                          if not relationship and f.name == "Id"), "")
        return _Outcome(record_id if _normalize_id(record_id) else "", error=_sf_error(_LOCKED))

    def _existing_id(self, sobject: str, raw_id: str) -> str:
        record_id = _normalize_id(raw_id)
        if record_id is None or not record_id.startswith(self.org._key_prefixes[sobject]):
            raise RecordError("MALFORMED_ID", f"{sobject} ID: id value of incorrect type: {raw_id}", ["Id"])
        if record_id not in self.org._rows[sobject]:
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted")
        return record_id

    # ---- answers -----------------------------------------------------------------------------------

    def _results(self, job: Job, kind: str) -> Response:
        shown = self._shown_state(job, poll=False)
        if shown not in _FINAL:
            raise ApiError(400, "INVALIDJOBSTATE", f"Job {job.id} is not complete: it is {shown}")
        data = job.uploads[0] if len(job.uploads) == 1 else b""
        try:
            names = next(self._reader(job, data), []) if data else []
        except (csv.Error, UnicodeDecodeError):
            names = []
        rows = self._rows(job, data) if names else iter(())
        out = io.StringIO()
        if kind == "unprocessedrecords":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(names)
            writer.writerows(itertools.islice(rows, len(job.outcomes), None))
        else:
            writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
            failed = kind == "failedresults"
            writer.writerow(["sf__Id", "sf__Error" if failed else "sf__Created", *names])
            for outcome, row in zip(job.outcomes, rows):
                if (outcome.error is not None) == failed:
                    writer.writerow([outcome.record_id, outcome.error if failed else
                                     str(outcome.created).lower(), *row])
        return Response(200, out.getvalue(), content_type="text/csv")

    def _info(self, job: Job, state: str, summary: bool = False) -> dict:
        """Job info as Create a Job, Upload Complete and Get Job Info return it (the first two without counts)."""
        info: dict[str, Any] = {
            "id": job.id, "operation": job.operation, "object": job.object, "createdById": USER_ID,
            "createdDate": job.created, "systemModstamp": job.modified, "state": state}
        if job.external_id:
            info["externalIdFieldName"] = job.external_id
        info |= {"concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(job.api_version)}
        if state == "Open":
            info["contentUrl"] = f"services/data/v{job.api_version}/jobs/ingest/{job.id}/batches"
        info |= {"lineEnding": job.line_ending, "columnDelimiter": job.delimiter}
        if summary:
            return info
        done = state in _FINAL
        failed = sum(1 for o in job.outcomes if o.error is not None) if done else 0
        info |= {"jobType": "V2Ingest", "numberRecordsProcessed": len(job.outcomes) if done else 0,
                 "numberRecordsFailed": failed, "retries": 0, "totalProcessingTime": 0,
                 "apiActiveProcessingTime": 0, "apexProcessingTime": 0}
        if state == "Failed":
            info["errorMessage"] = job.error_message
        return info


class _WholeJobFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _typed(f: Field, cell: str) -> Any:
    """A CSV cell as the field stores it; a value of the wrong type fails the row."""
    value: Any = cell
    if f.kind == "boolean":
        value = {"true": True, "false": False, "1": True, "0": False}.get(cell.lower(), cell)
    elif f.kind == "date":
        value = cell.removesuffix("Z")
    try:
        return _coerce(f, value)
    except ApiError:
        raise RecordError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{_label(f)}: value not of required type: {cell}",
                          [f.name]) from None


def _sf_error(errors: list[dict]) -> str:
    """The sf__Error text of a failed row: STATUS_CODE:message:fields --, for each error."""
    return " ".join(f"{e['statusCode']}:{e['message']}:{','.join(e['fields']) + ' ' if e['fields'] else ''}--"
                    for e in errors)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON") from None
