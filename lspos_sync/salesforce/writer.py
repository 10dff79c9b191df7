"""The `Writer` of a real run: records in sObject Collections inside `/composite` requests, full ones, every
per-record result read; queries travel in the same requests, behind the writes they must see. And the dry-run's
`RecordingSink`."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from lspos_sync.errors import QueryTooHeavy
from lspos_sync.mapping import ACCOUNT, CUSTOMER_KEY, LINE, LINE_KEY, SALE_KEY, TRANSACTION
from lspos_sync.retry import pause
from lspos_sync.salesforce.client import MAX_COLLECTIONS, MAX_RECORDS, SalesforceClient
from lspos_sync.writing import (CREATE_ACCOUNTS, DELETE_LINES, LINES, ORDER, TRANSACTIONS, UPDATE_ACCOUNTS, Write,
                                WriteStats)

if TYPE_CHECKING:
    from lspos_sync.resolving import Foreseen

log = logging.getLogger(__name__)

# What the lookups of accounts and transactions do not read: these may still wait when one is sent.
_UNREAD_BY_LOOKUPS = frozenset({LINES, DELETE_LINES})
# Collections `write` keeps back: enough to fill a request whose queries leave four slots free.
HOLD = MAX_COLLECTIONS - 1
# Codes that mean "not now" rather than "no" (fact sheet §4).
TRANSIENT_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG",
                             "QUERY_TIMEOUT", "INSERT_UPDATE_DELETE_NOT_ALLOWED_DURING_MAINTENANCE"})
# An upsert refused with this code most likely raced another client's upsert of the same new key (fact sheet
# §4): sent once more it matches that record. Once only: a value duplicated for good stays a refusal.
RACED = "DUPLICATE_VALUE"
_UPSERT_TARGET = {CREATE_ACCOUNTS: (ACCOUNT, CUSTOMER_KEY), TRANSACTIONS: (TRANSACTION, SALE_KEY),
                  LINES: (LINE, LINE_KEY)}
_OBJECT = {CREATE_ACCOUNTS: ACCOUNT, UPDATE_ACCOUNTS: ACCOUNT, TRANSACTIONS: TRANSACTION, LINES: LINE}
# A query's answer as a request brings it back: its rows, None (an optional one refused), or the refusal of one
# too complicated or too long, raised once the writes that travelled with it are answered.
_Answer = list[dict[str, Any]] | None | QueryTooHeavy


def chunks(writes: list[Write]) -> list[tuple[str, list[Write]]]:
    """Collections of at most 200 records, one kind each, in dependency order."""
    result = []
    for kind in ORDER:
        of_kind = [w for w in writes if w.kind == kind]
        for start in range(0, len(of_kind), MAX_RECORDS):
            result.append((kind, of_kind[start:start + MAX_RECORDS]))
    return result


class CompositeWriter:  # a Writer
    """Packs collections and queries five to a `/composite` request (the most one may carry) and records
    each result.

    Requests go out full. `write` sends five collections at a time and keeps the last few back, to travel
    with what comes next: the next batch's lookup queries, or its writes. Subrequests run in order, so a
    query is sent behind every queued write it may read: all account and transaction collections; lines
    and stale-line deletes, which the lookups of accounts and transactions do not read, only `after_lines`,
    and otherwise only as many as it takes to fill the request. A write is `answered` once its result is in.

    Records refused for a passing reason (UNABLE_TO_LOCK_ROW while another integration holds the same
    accounts, a busy server) are sent again, with what depends on them, after a growing pause and before
    anything else; every write is an upsert, update or delete by key, so sending it twice is harmless. An upsert
    refused DUPLICATE_VALUE (a race with another client upserting the same new key) goes again once.

    The full requests `write` sends go out from a thread of the writer's own (`_Sender`), one at a time and in
    order, so that the run maps and hashes its next batch while Salesforce works on this one. Everything else
    (queries, `flush`) first waits until that thread has nothing left in flight, so requests never overlap and a
    query still travels behind every write it must see. A failure there (a RunFailed: the allowance, a login,
    Salesforce down) comes out of the writer's next call.
    """

    def __init__(self, client: SalesforceClient, retries: int = 4, pause: float = 1.0) -> None:
        self._client = client
        self._retries = retries
        self._pause = pause
        self._queued: list[tuple[str, list[Write]]] = []  # collections not sent yet, in order
        self._sender = _Sender(lambda collections: self._send(collections, []))
        self.stats = WriteStats()

    def write(self, writes: list[Write]) -> None:
        self._sender.check()
        self._queued.extend(chunks(writes))
        while len(self._queued) >= MAX_COLLECTIONS + HOLD:
            self._sender.submit(self._take(MAX_COLLECTIONS))

    def queries(self, statements: list[str], optional: frozenset[int] = frozenset(),
                *, after_lines: bool = False) -> list[list[dict[str, Any]] | None]:
        """The answers, each statement followed to its last page. A refused statement fails the run, unless its
        index is `optional`: then its answer is None. One too complicated or too long raises QueryTooHeavy, after
        every request of the call is sent and its writes answered."""
        if not statements:
            return []
        self._sender.wait()
        if after_lines:
            needed = len(self._queued)
        else:
            needed = max((i + 1 for i, (kind, _) in enumerate(self._queued) if kind not in _UNREAD_BY_LOOKUPS),
                         default=0)
        fill = -(needed + len(statements)) % MAX_COLLECTIONS
        collections = self._take(needed + fill)
        asked = [(i, soql, i in optional) for i, soql in enumerate(statements)]
        answers: list[_Answer] = []
        while collections or asked:  # in each request the writes first, then the queries
            group, collections = collections[:MAX_COLLECTIONS], collections[MAX_COLLECTIONS:]
            room = MAX_COLLECTIONS - len(group)
            answers += self._send(group, asked[:room])
            asked = asked[room:]
        for answer in answers:
            if isinstance(answer, QueryTooHeavy):
                raise answer
        return answers  # type: ignore[return-value]  # no refusal left in it

    def flush(self) -> None:
        self._sender.wait()
        while self._queued:
            self._send(self._take(MAX_COLLECTIONS), [])

    def _take(self, count: int) -> list[tuple[str, list[Write]]]:
        taken, self._queued = self._queued[:count], self._queued[count:]
        return taken

    def _send(self, collections: list[tuple[str, list[Write]]],
              asked: list[tuple[int, str, bool]]) -> list[_Answer]:
        """One request; then what Salesforce refused for a passing reason, again, with the queries behind it
        again so that they see it too."""
        answers = self._exchange(collections, asked, first=True)
        for attempt in range(self._retries):
            retry_sales = {key for _, batch in collections for w in batch if w.transient for key in w.sale_keys}
            if not retry_sales:
                break
            # What failed among those sales goes again (lines refused for want of their transaction too).
            again = [w for _, batch in collections for w in batch if w.error and retry_sales.intersection(w.sale_keys)]
            for write in again:
                write.error, write.transient = None, False
            delay = pause(attempt, base=self._pause)
            log.info("Salesforce refused %d record(s) for a passing reason; retrying in %.1f s", len(again), delay)
            time.sleep(delay)
            answers = self._exchange(chunks(again), asked, first=False)
        # Answered only now, retries done: the run settles a sale as soon as all its writes are answered,
        # maybe while this runs on the sending thread.
        for _, batch in collections:
            for write in batch:
                write.answered = True
        return answers

    def _exchange(self, collections: list[tuple[str, list[Write]]],
                  asked: list[tuple[int, str, bool]], first: bool) -> list[_Answer]:
        """One request: the collections' results set on their writes, and the queries' answers. `first`: the
        collections' first sending, after which an upsert that raced is sent again."""
        if collections:
            self._client.ensure_allowance()
        subrequests = [self._subrequest(kind, batch, f"{kind}_{i}") for i, (kind, batch) in enumerate(collections)]
        reading = [self._client.query_request(soql, f"q{i}") for i, soql, _ in asked]
        responses = {r.get("referenceId"): r for r in self._client.composite(subrequests + [r for r, _ in reading])}
        for i, (kind, batch) in enumerate(collections):
            self._read(responses.get(f"{kind}_{i}"), batch, first and kind in _UPSERT_TARGET)
            accepted = sum(1 for write in batch if not write.error)  # what Salesforce holds, not what was sent
            self.stats.records[kind] = self.stats.records.get(kind, 0) + accepted
        answers: list[_Answer] = []
        for (request, sobject), (_, _, optional) in zip(reading, asked):
            try:
                answers.append(self._client.query_answer(responses.get(request["referenceId"]), sobject, optional))
            except QueryTooHeavy as refusal:
                answers.append(refusal)
        return answers

    def _subrequest(self, kind: str, batch: list[Write], reference_id: str) -> dict[str, Any]:
        base = f"{self._client.data_path}/composite/sobjects"
        if kind == DELETE_LINES:
            ids = ",".join(str(w.record) for w in batch)
            return {"method": "DELETE", "url": f"{base}?ids={ids}&allOrNone=false", "referenceId": reference_id}
        names = self._client.field_map
        records = [names.outgoing(_OBJECT[kind], w.record) for w in batch]
        if kind == UPDATE_ACCOUNTS:
            return {"method": "PATCH", "url": base, "referenceId": reference_id,
                    "body": {"allOrNone": False, "records": records}}
        sobject, external_id = _UPSERT_TARGET[kind]
        url = f"{base}/{names.obj(sobject)}/{names.field(sobject, external_id)}"
        return {"method": "PATCH", "url": url, "referenceId": reference_id,
                "body": {"allOrNone": False, "records": records}}

    @staticmethod
    def _read(response: dict[str, Any] | None, batch: list[Write], race_again: bool) -> None:
        if response is None:
            for write in batch:
                write.error = "NO_RESULT: Salesforce returned no result for this subrequest"
            return
        body = response.get("body")
        status = response.get("httpStatusCode", 500)
        if status >= 300 or not isinstance(body, list) or len(body) != len(batch):
            reason = _errors(body) or f"HTTP {status}"
            for write in batch:
                write.error, write.transient = reason, status >= 500 or _transient(body)
            return
        for write, result in zip(batch, body):
            if write.kind == DELETE_LINES and _codes(result.get("errors")) & {"ENTITY_IS_DELETED"}:
                continue  # already gone: a replayed request whose first answer was lost
            if result.get("success"):
                write.id = result.get("id")
                write.created = result.get("created")
                write.record = None
            else:
                codes = _codes(result.get("errors"))
                write.error = _errors(result.get("errors")) or "rejected without a reason"
                write.transient = bool(codes & TRANSIENT_CODES) or (race_again and RACED in codes)


class _Sender:
    """Sends one request after another from a thread of its own, in the order they are submitted. `wait`
    returns once nothing is in flight; a failure is raised by the next `check`, `submit` or `wait`, and the
    requests submitted after it are dropped (the run stops: their sales are not settled, the checkpoint stays).
    The thread starts with the first request and ends when idle, so a run that writes nothing has none."""

    def __init__(self, send: Callable[[list[tuple[str, list[Write]]]], Any]) -> None:
        self._send = send
        self._todo: deque[list[tuple[str, list[Write]]]] = deque()
        self._idle = threading.Condition()
        self._busy = False  # a thread is running
        self._failure: BaseException | None = None

    def submit(self, collections: list[tuple[str, list[Write]]]) -> None:
        with self._idle:
            self._raise()
            self._todo.append(collections)
            if not self._busy:
                self._busy = True
                threading.Thread(target=self._run, name="salesforce-writer", daemon=True).start()

    def wait(self) -> None:
        with self._idle:
            while self._busy:
                self._idle.wait()
            self._raise()

    def check(self) -> None:
        with self._idle:
            self._raise()

    def _raise(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _run(self) -> None:
        while True:
            with self._idle:
                if not self._todo or self._failure is not None:
                    self._todo.clear()
                    self._busy = False
                    self._idle.notify_all()
                    return
                collections = self._todo.popleft()
            try:
                self._send(collections)
            except BaseException as error:  # noqa: BLE001 - handed to the run's thread, which raises it
                with self._idle:
                    self._failure = error


class RecordingSink:  # a Writer
    """dry-run: the same writes, counted instead of sent; every one 'succeeds' (no error, no Id). Queries go
    straight to Salesforce, which has none of the writes: the account writes are recorded in `foreseen`, which the
    resolver lays over what its lookups find (resolving.Foreseen)."""

    def __init__(self, client: SalesforceClient, foreseen: Foreseen) -> None:
        self._client = client
        self.foreseen = foreseen
        self.stats = WriteStats()

    def write(self, writes: list[Write]) -> None:
        for kind, batch in chunks(writes):
            self.stats.records[kind] = self.stats.records.get(kind, 0) + len(batch)
        names = self._client.field_map
        for write in writes:
            if write.kind in (CREATE_ACCOUNTS, UPDATE_ACCOUNTS):
                # as the org would hold it: renamed there and back, a field the mapping switches off not written
                self.foreseen.record(write.kind, names.incoming(ACCOUNT, names.outgoing(ACCOUNT, write.record)))
            write.answered = True

    def queries(self, statements: list[str], optional: frozenset[int] = frozenset(),
                *, after_lines: bool = False) -> list[list[dict[str, Any]] | None]:
        return self._client.queries(statements, optional)

    def flush(self) -> None:
        pass


def _codes(errors: Any) -> set[str]:
    return {(e.get("statusCode") or e.get("errorCode")) for e in errors if isinstance(e, dict)} \
        if isinstance(errors, list) else set()


def _transient(errors: Any) -> bool:
    return bool(_codes(errors) & TRANSIENT_CODES)


def _errors(errors: Any) -> str:
    if not isinstance(errors, list):
        return ""
    parts = []
    for error in errors:
        if isinstance(error, dict):
            code = error.get("statusCode") or error.get("errorCode") or ""
            fields = error.get("fields") or []
            parts.append(f"{code}: {error.get('message', '')}" + (f" ({', '.join(fields)})" if fields else ""))
    return "; ".join(parts)
