"""The Salesforce connection: one simple-salesforce `Salesforce` per run carries every call (`/composite`
through `restful()`, SOQL, describes, `/limits`, and Bulk API 2.0 through its `bulk2`); here are the retries,
the session renewal, the API reserve and the error classification around it.

simple-salesforce (and zeep and lxml with it) is imported on the first call, so a run with nothing to write
never loads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lspos_sync.config import SalesforceSettings
from lspos_sync.errors import QueryTooHeavy, RunFailed, SalesforceAuthError
from lspos_sync.fieldmap import DEFAULT, FieldMap
from lspos_sync.retry import pause
from lspos_sync.salesforce.auth import Session, authenticate

if TYPE_CHECKING:  # imported only when Salesforce is called
    import requests
    from simple_salesforce import Salesforce

log = logging.getLogger(__name__)

MAX_SUBREQUESTS = 25
MAX_COLLECTIONS = 5  # sObject Collections or query subrequests per /composite (fact sheet §1.1)
MAX_RECORDS = 200
_ATTEMPTS = 5


class SalesforceClient:
    def __init__(self, settings: SalesforceSettings, http: requests.Session | None = None,
                 reserve_percent: float = 5.0, field_map: FieldMap = DEFAULT) -> None:
        """`http` is the requests session every request goes through (by default a SalesforceSession, which
        times requests out); it must not retry by itself."""
        self._settings = settings
        self.field_map = field_map  # the org's names: SOQL goes out in them, rows come back in the contract's
        self._http = http
        self._session: Session | None = None
        self._sf: Salesforce | None = None
        self._reserve_percent = reserve_percent
        self._usage: tuple[int, int] | None = None  # (used, allowance) of the org's daily API requests, as last told
        self._told_at = 0  # api_calls when Salesforce last told the usage
        self._limits_read = False
        self.api_calls = 0
        self._calls_lock = threading.Lock()  # the composite writer's sending thread counts too

    @property
    def data_path(self) -> str:
        """Subrequest URLs in a composite must start with this."""
        return f"/services/data/v{self._settings.api_version}"

    @property
    def sf(self) -> Salesforce:
        """The run's simple-salesforce connection, logged in on first use. After a renewal it carries the new
        token, so take `sf.bulk2` afresh for each job."""
        if self._sf is None:
            self.connect()
        assert self._sf is not None
        return self._sf

    def connect(self) -> None:
        """Logs in (again, when the session expired). A renewal puts the new token on the same `Salesforce`,
        as simple-salesforce's own refresh does."""
        from simple_salesforce import Salesforce

        from lspos_sync.salesforce.session import SalesforceSession

        self._http = self._http or SalesforceSession()
        self._session = authenticate(self._settings, self._http)
        if self._sf is None:
            self._sf = Salesforce(instance_url=self._session.instance_url, session_id=self._session.access_token,
                                  session=self._http, version=self._settings.api_version, object_pairs_hook=None)
        self._sf.session_id = self._session.access_token
        # simple-salesforce's headers less its X-PrettyPrint: an indented answer is only a longer one.
        self._sf.headers = {"Content-Type": "application/json",
                            "Authorization": f"Bearer {self._session.access_token}"}

    # -- calls
    def composite(self, subrequests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One `/composite` call (one API call against the daily limit), subrequests run in order.

        Only idempotent subrequests are sent (queries, upserts by external ID, updates and deletes by Id),
        so the whole request may be replayed after a lost response or a server error.
        """
        from pydantic_core import to_json

        if len(subrequests) > MAX_SUBREQUESTS:
            raise ValueError("a composite request holds at most 25 subrequests")
        data = to_json({"allOrNone": False, "collateSubrequests": False, "compositeRequest": subrequests})
        response = self._call("POST composite", lambda sf: sf.restful("composite", method="POST", data=data))
        return list(response.get("compositeResponse", []))

    def count_call(self) -> None:
        """One more API call made, from whichever thread makes it."""
        with self._calls_lock:
            self.api_calls += 1

    def ensure_allowance(self) -> None:
        """Stops the run before a write once the org's daily API allowance is down to the reserve, which
        is left to the org's other integrations. The first check reads /limits; later ones the usage
        that Salesforce reports on every REST response (Sforce-Limit-Info), plus the calls made since that
        told none: Bulk API 2.0 job calls go through simple-salesforce's bulk2, which does not read the header,
        and a bulk flush makes one job after another with no REST call between them."""
        if self._usage is None and not self._limits_read:
            self._limits_read = True
            try:
                limits = self._call("GET limits", lambda sf: sf.limits()) or {}
            except RunFailed as error:  # an org (or proxy) that hides /limits: the headers will tell
                log.info("Salesforce /limits unavailable (%s); relying on Sforce-Limit-Info", error)
                limits = {}
            self._note_daily(limits)
        if self._usage is None:
            return
        used, allowance = self._usage
        used += self.api_calls - self._told_at
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
        or gives None when the query was `optional`; one too complicated, or stopped as too long, raises
        QueryTooHeavy either way (asked in smaller statements, it may go through: fact sheet §4, "shrink the
        request")."""
        body = (response or {}).get("body")
        if (response or {}).get("httpStatusCode") == 200 and isinstance(body, dict):
            return self._rows(sobject, self.rest_of_query(body))
        code = _error_code(body)
        if code == "QUERY_TOO_COMPLICATED":
            raise QueryTooHeavy("found a lookup too complicated", _described(body))
        if code in _TOO_LONG:
            raise QueryTooHeavy("stopped a lookup as running too long", _described(body))
        if not optional:
            raise RunFailed(f"Salesforce refused a query: {_described(body)}")
        log.info("Salesforce refused an optional query (%s); going on without it", _described(body))
        return None

    def get(self, path: str) -> Any:
        """A GET on a path under /services/data/vXX.X/ (e.g. a query's nextRecordsUrl)."""
        path = path.split(f"{self.data_path}/", 1)[-1]
        return self._call(f"GET {path.split('?')[0]}", lambda sf: sf.restful(path))

    def query(self, soql: str) -> list[dict[str, Any]]:
        """A short query on its own (the record type lookup); long ones travel inside a composite."""
        statement, sobject = self.field_map.soql(soql)
        return self._rows(sobject, self.rest_of_query(self._call("GET query", lambda sf: sf.query(statement))))

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
                return {name: self._describe_one(name) for name in sobjects}
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

    def _describe_one(self, sobject: str) -> dict[str, Any] | None:
        return self._call(f"GET sobjects/{sobject}/describe",
                          lambda sf: sf.restful(f"sobjects/{sobject}/describe"), missing_ok=True)

    def _call(self, what: str, request: Callable[[Salesforce], Any], missing_ok: bool = False) -> Any:
        """One REST request (one API call) through simple-salesforce, `what` naming it in messages: its JSON
        answer, None for an empty one, and with `missing_ok` for a 404."""
        import requests
        from simple_salesforce.exceptions import SalesforceError

        renewed = False
        for attempt in range(_ATTEMPTS):
            sf = self.sf
            sf.api_usage = {}  # to read the Sforce-Limit-Info of this answer only
            self.count_call()
            try:
                answer = request(sf)
            except requests.JSONDecodeError:
                self._backoff(attempt, f"unreadable JSON from {what}")
                continue
            except requests.RequestException as error:
                self._backoff(attempt, type(error).__name__)
                continue
            except SalesforceError as error:
                status, content = error.status, error.content
            else:
                usage = sf.api_usage.get("api-usage")
                if usage:
                    self._told(usage.used, usage.total)
                return answer
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
                if code == "REQUEST_LIMIT_EXCEEDED" and self._allowance_left(sf):
                    # §4: the same code for too many concurrent long requests, to be waited out
                    self._backoff(attempt, "too many concurrent long requests in the org (REQUEST_LIMIT_EXCEEDED "
                                           "with daily allowance left)")
                    continue
                if code == "REQUEST_LIMIT_EXCEEDED":
                    raise RunFailed("Salesforce API request limit exceeded (REQUEST_LIMIT_EXCEEDED): the org's daily "
                                    "allowance is used up; the run stopped and will resume from its checkpoint")
                raise RunFailed(f"Salesforce refused {what}: {code or status}")
            elif status == 404 and missing_ok:
                return None
            elif status >= 500:
                self._backoff(attempt, f"HTTP {status}")
            else:
                raise RunFailed(f"Salesforce answered HTTP {status} to {what}: "
                                f"{_error_code(content) or str(content)[:200]}")
        raise RunFailed(f"Salesforce kept failing on {what}")

    def _allowance_left(self, sf: Salesforce) -> bool:
        """Whether the org's daily allowance has calls left, by `/limits` (fact sheet §4: REQUEST_LIMIT_EXCEEDED is
        either limit, told apart by the numbers). A refused `/limits` means the daily one."""
        import requests
        from simple_salesforce.exceptions import SalesforceError

        self.count_call()
        try:
            limits = sf.limits() or {}
        except SalesforceError:
            return False
        except requests.RequestException:  # no answer: asked again with the request, within its attempts
            return True
        return int(self._note_daily(limits).get("Remaining", 0)) > 0

    def _note_daily(self, limits: dict[str, Any]) -> dict[str, Any]:
        """The daily allowance of a `/limits` answer (`DailyApiRequests`), noted as the usage the reserve is
        checked against."""
        daily = limits.get("DailyApiRequests") or {}
        if daily.get("Max"):
            self._told(int(daily["Max"]) - int(daily.get("Remaining", 0)), int(daily["Max"]))
        return daily

    def _told(self, used: int, allowance: int) -> None:
        """The org's usage as Salesforce just told it, counting every call made so far."""
        self._usage, self._told_at = (used, allowance), self.api_calls

    @staticmethod
    def _backoff(attempt: int, what: str) -> None:
        if attempt + 1 >= _ATTEMPTS:
            raise RunFailed(f"Salesforce kept failing: {what}")
        delay = pause(attempt)
        log.info("Salesforce: %s; retrying in %.1f s", what, delay)
        time.sleep(delay)


# What Salesforce answers a statement it stopped for its time (fact sheet §4: "shrink the request").
_TOO_LONG = frozenset({"QUERY_TIMEOUT", "REQUEST_RUNNING_TOO_LONG"})


def _described(body: Any) -> str:
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return f"{body[0].get('errorCode')}: {body[0].get('message')}"
    return str(body)[:200]


def _error_code(content: Any) -> str:
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode") or content[0].get("message") or "")
    return ""
