"""The Salesforce REST session: authentication, `/composite` requests, error classification.

Calls go straight through the requests session that authenticated: simple-salesforce's `restful()` would
bring zeep and lxml into the process (16 MB, 80 ms of imports) for a SOAP API the sync never calls, json-encode
the bodies with the standard library and decode every answer into OrderedDicts.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from lspos_sync.config import SalesforceSettings
from lspos_sync.errors import RunFailed, SalesforceAuthError
from lspos_sync.fieldmap import DEFAULT, FieldMap
from lspos_sync.retry import pause
from lspos_sync.salesforce.auth import Session, authenticate

if TYPE_CHECKING:  # imported only when Salesforce is called
    import requests

log = logging.getLogger(__name__)

MAX_SUBREQUESTS = 25
MAX_COLLECTIONS = 5  # sObject Collections or query subrequests per /composite (fact sheet §1.1)
MAX_RECORDS = 200
_ATTEMPTS = 5
_TIMEOUT = 300
_API_USAGE = re.compile(r"[^-]?api-usage=(\d+)/(\d+)")  # Sforce-Limit-Info: api-usage=18/5000[;...]


class SalesforceClient:
    def __init__(self, settings: SalesforceSettings, http: requests.Session | None = None,
                 reserve_percent: float = 5.0, field_map: FieldMap = DEFAULT) -> None:
        self._settings = settings
        self.field_map = field_map  # the org's names: SOQL goes out in them, rows come back in the contract's
        self._http = http
        self._session: Session | None = None
        self._base = ""  # https://host/services/data/vXX.X/, once connected
        self._headers: dict[str, str] = {}
        self._reserve_percent = reserve_percent
        self._usage: tuple[int, int] | None = None  # (used, allowance) of the org's daily API requests
        self._limits_read = False
        self.api_calls = 0

    @property
    def data_path(self) -> str:
        """Subrequest URLs in a composite must start with this."""
        return f"/services/data/v{self._settings.api_version}"

    def connect(self) -> None:
        import requests

        self._http = self._http or requests.Session()
        self._session = authenticate(self._settings, self._http)
        instance = urlsplit(self._session.instance_url)
        host = f"{instance.hostname}:{instance.port}" if instance.port else instance.hostname
        self._base = f"https://{host}{self.data_path}/"
        self._headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._session.access_token}"}

    # -- calls
    def composite(self, subrequests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One `/composite` call (one API call against the daily limit), subrequests run in order.

        Only idempotent subrequests are sent (queries, upserts by external ID, updates and deletes by Id),
        so the whole request may be replayed after a lost response or a server error.
        """
        if len(subrequests) > MAX_SUBREQUESTS:
            raise ValueError("a composite request holds at most 25 subrequests")
        body = {"allOrNone": False, "collateSubrequests": False, "compositeRequest": subrequests}
        response = self._call("composite", "POST", body)
        return list(response.get("compositeResponse", []))

    def ensure_allowance(self) -> None:
        """Stops the run before a write once the org's daily API allowance is down to the reserve, which
        is left to the org's other integrations. The first check reads /limits; later ones the usage
        that Salesforce reports on every response (Sforce-Limit-Info)."""
        if self._usage is None and not self._limits_read:
            self._limits_read = True
            try:
                limits = self._call("limits", "GET", None) or {}
            except RunFailed as error:  # an org (or proxy) that hides /limits: the headers will tell
                log.info("Salesforce /limits unavailable (%s); relying on Sforce-Limit-Info", error)
                limits = {}
            daily = limits.get("DailyApiRequests") or {}
            if daily.get("Max"):
                self._usage = (int(daily["Max"]) - int(daily.get("Remaining", 0)), int(daily["Max"]))
        if self._usage is None:
            return
        used, allowance = self._usage
        if allowance - used <= allowance * self._reserve_percent / 100:
            raise RunFailed(
                f"Salesforce daily API allowance nearly used ({used} of {allowance} requests; reserve "
                f"{self._reserve_percent:g}% kept for other integrations by LSPOS_API_RESERVE_PERCENT): stopped "
                "before writing; the next run resumes from the checkpoint")

    def queries(self, statements: list[str], optional: frozenset[int] = frozenset()) -> list[list[dict[str, Any]] | None]:
        """Many SOQL statements, five to a `/composite` call (the SOQL travels in the body, so no URI limit),
        each followed to its last page. A refused statement fails the run, unless its index is `optional`:
        then its answer is None."""
        answers: list[list[dict[str, Any]] | None] = []
        for start in range(0, len(statements), MAX_COLLECTIONS):
            group = [self.query_request(soql, f"q{i}") for i, soql in enumerate(statements[start:start + MAX_COLLECTIONS], start)]
            responses = {r.get("referenceId"): r for r in self.composite([request for request, _ in group])}
            answers += [self.query_answer(responses.get(request["referenceId"]), sobject, start + i in optional)
                        for i, (request, sobject) in enumerate(group)]
        return answers

    def query_request(self, soql: str, reference_id: str) -> tuple[dict[str, Any], str | None]:
        """A query subrequest for a `/composite` request, in the org's names, and the object its rows are of."""
        statement, sobject = self.field_map.soql(soql)
        return {"method": "GET", "url": f"{self.data_path}/query?q={quote(statement)}", "referenceId": reference_id}, sobject

    def query_answer(self, response: dict[str, Any] | None, sobject: str | None,
                     optional: bool = False) -> list[dict[str, Any]] | None:
        """The rows a query subrequest found, every page, in the contract's names. A refusal fails the run,
        or gives None when the query was `optional`."""
        body = (response or {}).get("body")
        if (response or {}).get("httpStatusCode") == 200 and isinstance(body, dict):
            return self._rows(sobject, self.rest_of_query(body))
        if not optional:
            raise RunFailed(f"Salesforce refused a query: {_described(body)}")
        log.info("Salesforce refused an optional query (%s); going on without it", _described(body))
        return None

    def get(self, path: str) -> Any:
        """A GET on a path under /services/data/vXX.X/ (e.g. a query's nextRecordsUrl)."""
        return self._call(path.split(f"{self.data_path}/", 1)[-1], "GET", None)

    def query(self, soql: str) -> list[dict[str, Any]]:
        """A short query on its own (the record type lookup); long ones travel inside a composite."""
        statement, sobject = self.field_map.soql(soql)
        return self._rows(sobject, self.rest_of_query(self._call(f"query?q={quote(statement)}", "GET", None)))

    def _rows(self, sobject: str | None, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.field_map.identity or sobject is None:
            return records
        return [self.field_map.incoming(sobject, record) for record in records]

    def describe(self, sobjects: list[str]) -> dict[str, dict[str, Any] | None]:
        """The org's describe of each object (None where there is no such object), in one `/composite` call.
        `sobjects[0]` must exist (Account): if even it is not described inside the composite, the server
        does not take describes there, and each is asked for on its own."""
        responses = {r.get("referenceId"): r for r in self.composite([
            {"method": "GET", "url": f"{self.data_path}/sobjects/{name}/describe", "referenceId": f"d{i}"}
            for i, name in enumerate(sobjects)])}
        described: dict[str, dict[str, Any] | None] = {}
        for i, name in enumerate(sobjects):
            response = responses.get(f"d{i}") or {}
            status, body = response.get("httpStatusCode"), response.get("body")
            if status == 200 and isinstance(body, dict):
                described[name] = body
            elif i == 0:
                log.info("Salesforce did not describe %s inside /composite (%s); describing one by one", name,
                         _described(body))
                return {name: self._call(f"sobjects/{name}/describe", "GET", None, missing_ok=True)
                        for name in sobjects}
            elif status == 404:
                described[name] = None
            else:
                raise RunFailed(f"Salesforce refused to describe {name}: {_described(body)}")
        return described

    def rest_of_query(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        records = list(result.get("records", []))
        while not result.get("done", True) and result.get("nextRecordsUrl"):
            result = self.get(result["nextRecordsUrl"])
            records.extend(result.get("records", []))
        return records

    def _call(self, path: str, method: str, body: Any, missing_ok: bool = False) -> Any:
        """One REST request (one API call), with the JSON answer decoded; None for an empty answer, and with
        `missing_ok` for a 404."""
        import orjson
        import requests

        if self._session is None:
            self.connect()
        assert self._http is not None
        data = orjson.dumps(body) if body is not None else None
        renewed = False
        for attempt in range(_ATTEMPTS):
            self.api_calls += 1
            try:
                response = self._http.request(method, self._base + path, headers=self._headers, data=data,
                                              timeout=_TIMEOUT)
            except requests.RequestException as error:
                self._backoff(attempt, type(error).__name__)
                continue
            status = response.status_code
            if status < 300:
                self._usage = _usage(response.headers.get("Sforce-Limit-Info")) or self._usage
                if status == 204:
                    return None
                try:
                    return orjson.loads(response.content) or None
                except orjson.JSONDecodeError:
                    self._backoff(attempt, f"unreadable JSON from {method} {path.split('?')[0]}")
                    continue
            content = _content(response)
            if status == 401:
                if renewed or not (self._session and self._session.renewable):
                    if self._session and not self._session.renewable:
                        raise SalesforceAuthError(
                            "Salesforce rejected the session (INVALID_SESSION_ID): renew SALESFORCE_ACCESS_TOKEN, "
                            "or configure JWT bearer or client credentials so the tool can renew it itself")
                    raise SalesforceAuthError("Salesforce rejected a freshly renewed session")
                log.info("Salesforce session expired; logging in again")
                self.connect()
                renewed = True
            elif status == 403:
                code = _error_code(content)
                if code == "REQUEST_LIMIT_EXCEEDED" and "concurrent" in str(content).lower():
                    self._backoff(attempt, "too many concurrent long requests in the org")  # §4: back off
                    continue
                if code == "REQUEST_LIMIT_EXCEEDED":
                    raise RunFailed("Salesforce API request limit exceeded (REQUEST_LIMIT_EXCEEDED): the org's daily "
                                    "allowance is used up; the run stopped and will resume from its checkpoint")
                raise RunFailed(f"Salesforce refused {method} {path.split('?')[0]}: {code or status}")
            elif status == 404 and missing_ok:
                return None
            elif status >= 500:
                self._backoff(attempt, f"HTTP {status}")
            else:
                raise RunFailed(f"Salesforce answered HTTP {status} to {method} {path.split('?')[0]}: "
                                f"{_error_code(content) or str(content)[:200]}")
        raise RunFailed(f"Salesforce kept failing on {method} {path.split('?')[0]}")

    @staticmethod
    def _backoff(attempt: int, what: str) -> None:
        if attempt + 1 >= _ATTEMPTS:
            raise RunFailed(f"Salesforce kept failing: {what}")
        delay = pause(attempt)
        log.info("Salesforce: %s; retrying in %.1f s", what, delay)
        time.sleep(delay)


def _described(body: Any) -> str:
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return f"{body[0].get('errorCode')}: {body[0].get('message')}"
    return str(body)[:200]


def _error_code(content: Any) -> str:
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode") or content[0].get("message") or "")
    return ""


def _content(response: requests.Response) -> Any:
    """An error answer's body: its JSON (Salesforce's `[{"errorCode": ..., "message": ...}]`), else its text."""
    import orjson

    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text


def _usage(limit_info: str | None) -> tuple[int, int] | None:
    """(used, allowance) of the org's daily API requests, from a Sforce-Limit-Info header."""
    found = _API_USAGE.match(limit_info or "")
    return (int(found.group(1)), int(found.group(2))) if found else None
