"""The Lightspeed R-Series API: cursor paging, leaky-bucket pacing, retries. Reads only."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar, Union

import httpx

from lspos_sync import certificates
from lspos_sync.errors import RunFailed
from lspos_sync.retry import pause
from lspos_sync.lightspeed.auth import LightspeedAuth
from lspos_sync.lightspeed.wire import InvalidPayload, one_or_many

if TYPE_CHECKING:
    from lspos_sync.lightspeed.models import Category, Customer, Item, Sale, Shop

log = logging.getLogger(__name__)
R = TypeVar("R")
Row = Union["Sale", dict[str, Any]]  # a sale read straight from the page, or its payload for the engine to read

SALE_RELATIONS = ["SaleLines", "SaleLines.Item", "SalePayments", "SalePayments.PaymentType",
                  "Customer", "Customer.Contact"]
PAGE_SIZE = 100  # the maximum (fact sheet §2)
MIN_PAGE_SIZE = 10
_ATTEMPTS = 6
# A host clock further than this from Lightspeed's is worth a warning (what is read does not depend on it).
CLOCK_TOLERANCE = timedelta(minutes=1)


def http_client() -> httpx.Client:
    """The HTTP client of a run's Lightspeed requests, token refreshes included."""
    return httpx.Client(timeout=httpx.Timeout(120.0, connect=20.0), verify=certificates.for_httpx())


@dataclass(frozen=True)
class SaleReading:
    """One way of asking Lightspeed for the sales changed in a window (docs/sync-rules.md, "Which sales are read")."""

    filtered_on: str | None  # the field the window is filtered on; None: no filter, stop once past the window
    sort: str
    note: str = ""  # what the run logs once, when it settles on this reading
    # Whether the reading may miss a sale's changes: only then is settling on it a warning. The others miss
    # nothing, and an API that always refuses the first would otherwise have every cron run warn.
    lossy: bool = False


# Best first; a run moves down the list for each one Lightspeed refuses (fact sheet §2, §4.6, §9).
_READINGS = (
    SaleReading("updatetime", "updatetime"),
    # The tutorial and some clients spell it updateTime (§4.6).
    SaleReading("updateTime", "updateTime", "filtering on updateTime instead"),
    # Sorting on updatetime is documented where filtering on it is not (§2): nothing is missed, at the cost of
    # reading the sales changed since the window's end too.
    SaleReading(None, "-updatetime", "reading the sales newest change first (sort=-updatetime) without a filter, "
                "down to the window's start"),
    SaleReading(None, "-updateTime", "reading the sales newest change first (sort=-updateTime) without a filter, "
                "down to the window's start"),
    SaleReading("timeStamp", "timeStamp",
                "falling back to timeStamp, which may not move when a completed sale is edited", lossy=True),
)


def lightspeed_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


@dataclass
class Bucket:
    """Our view of the leaky bucket, from the X-LS-API-* headers of the last response (fact sheet §6)."""

    level: float = 0.0
    size: float = 90.0
    drip_rate: float = 1.0
    cost: float = 1.0
    burst: int = 0
    burst_limit: int = 0
    seen_at: float = 0.0

    def _drained(self, now: float) -> float:
        """The level now, the drips since the last view of it gone."""
        return max(0.0, self.level - (now - self.seen_at) * self.drip_rate)

    def wait_before_next(self, now: float) -> float:
        """Seconds to wait so the next request fits in the bucket and in the burst window."""
        level = self._drained(now)
        wait = max(0.0, (level + self.cost + 1.0 - self.size) / self.drip_rate) if self.drip_rate > 0 else 0.0
        if self.burst_limit and self.burst >= self.burst_limit - 1 and now - self.seen_at < 1.0:
            wait = max(wait, 1.0 - (now - self.seen_at))
        return wait

    def pour(self, now: float) -> float:
        """Counts a request in as it is sent (its cost, as the last response said), before its answer says
        what the bucket holds: another request sent meanwhile is paced with it in. The cost, returned."""
        self.level = self._drained(now) + self.cost
        if now - self.seen_at < 1.0:
            self.burst += 1
        self.seen_at = now
        return self.cost

    def update(self, headers: httpx.Headers, now: float, in_flight: float = 0.0) -> None:
        """From a response's headers; `in_flight`: the cost of the requests sent and not answered yet, which
        the level it gives may not count (so it is added: an overestimate, never an underestimate)."""
        level = _fraction(headers.get("x-ls-api-bucket-level"))
        if level:
            self.level, self.size = level[0] + in_flight, level[1]
        drip = _float(headers.get("x-ls-api-drip-rate"))
        if drip:
            self.drip_rate = drip
        cost = _float(headers.get("x-ls-api-request-cost"))
        if cost:
            self.cost = cost
        burst = _fraction(headers.get("x-ls-api-burst-level"))
        if burst:
            self.burst, self.burst_limit = int(burst[0]), int(burst[1])
        self.seen_at = now


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _fraction(value: str | None) -> tuple[float, float] | None:
    if not value or "/" not in value:
        return None
    left, right = (_float(part.strip()) for part in value.split("/", 1))
    return (left, right) if left is not None and right else None


class LightspeedClient:
    def __init__(self, http: httpx.Client, api_url: str, account_id: str, auth: LightspeedAuth) -> None:
        self._http = http
        self._base = f"{api_url.rstrip('/')}/Account/{account_id}"
        self._auth = auth
        self.bucket = Bucket()
        self.requests = 0
        self.throttled = 0  # 429 responses met
        self._reading = 0  # the index in _READINGS of the way this run reads a window's sales
        self._refusal = ""  # Lightspeed's answer to the first reading, once refused
        self._warned = False
        # Requests may be sent from two threads at once (the page reader, and the run asking for voids or
        # customers): one thread at a time waits for room in the bucket, and each request is counted in as sent.
        self._turn = threading.Lock()  # held by the thread waiting for room
        self._state = threading.Lock()  # the bucket, the counters, what is in flight
        self._in_flight = 0.0
        self._dated: tuple[datetime, float] | None = None  # the Date of the latest response, and when it came
        self.host_ahead: timedelta | None = None  # the host's clock minus Lightspeed's, at the first dated response

    # -- Lightspeed's clock
    def now(self) -> datetime:
        """Lightspeed's clock: the `Date` header of its latest response, moved on by the time since it came.
        Before any response, the cheapest request there is (the account itself, one drip) is made for it.

        Date has whole seconds and is stamped before the response travels, so this is never later than
        Lightspeed's true time: a window ending here never ends after a sale Lightspeed has not written yet."""
        if self._dated is None:
            self._get(f"{self._base}.json", None, lambda content: None)
        if self._dated is None:  # a proxy that strips Date; real Lightspeed sends one, as any HTTP server
            log.warning("Lightspeed's responses carry no Date header: the window ends at the host's clock")
            return datetime.now(timezone.utc)
        date, seen_at = self._dated
        return date + timedelta(seconds=time.monotonic() - seen_at)

    def _note_date(self, header: str | None, seen_at: float) -> None:
        try:
            date = parsedate_to_datetime(header) if header else None
        except (TypeError, ValueError):
            date = None
        if date is None or date.tzinfo is None:
            return
        self._dated = (date, seen_at)
        if self.host_ahead is None:
            self.host_ahead = datetime.now(timezone.utc) - date
            if abs(self.host_ahead) > CLOCK_TOLERANCE:
                minutes = abs(self.host_ahead.total_seconds()) / 60
                log.warning("the host clock is %.0f minute(s) %s Lightspeed's: windows and the checkpoint follow "
                            "Lightspeed's clock, so nothing is missed, but keep the host on NTP", minutes,
                            "ahead of" if self.host_ahead > timedelta(0) else "behind")

    # -- reading
    @property
    def on_time_stamp(self) -> bool:
        """Whether the window is filtered on `timeStamp` (the last reading), not on the update time."""
        return _READINGS[self._reading].filtered_on == "timeStamp"

    @property
    def oldest_first(self) -> bool:
        """Whether the window's pages come oldest change first (the reading in use; settled by the first page)."""
        return not _READINGS[self._reading].sort.startswith("-")

    def sales(self, since: datetime, until: datetime, raw: bool = False) -> Iterator[list[Row]]:
        """Pages of completed sales whose last update lies in [since, until]: each sale read as a `Sale`, or, in
        a page where one does not read, and with `raw`, as its payload. Oldest change first, unless Lightspeed
        refuses every filter on the update time (`oldest_first`).

        The update time is what moves on edits and voids after completion (fact sheet §9), but filtering on it
        is unconfirmed (§2): each refusal moves the run to the next reading of `_READINGS`, for the rest of it.
        """
        while True:
            pages = self._window_pages(_READINGS[self._reading], since, until, typed=not raw)
            try:
                first = next(pages, None)
            except _Refused as refused:
                self._refused(refused, "the Sale query")
                continue
            self._settled()
            if first is None:
                return
            yield first
            yield from pages  # past the first page a refusal is no reading refused (`_pages`): the run fails
            return

    def _window_pages(self, reading: SaleReading, since: datetime, until: datetime,
                      typed: bool) -> Iterator[list[Row]]:
        params = {"sort": reading.sort, "completed": "true", "limit": str(PAGE_SIZE),
                  "load_relations": json.dumps(SALE_RELATIONS, separators=(",", ":"))}
        if reading.filtered_on is not None:
            params[reading.filtered_on] = f"><,{lightspeed_time(since)},{lightspeed_time(until)}"
            yield from self._pages("Sale.json", params, "Sale", typed)
            return
        # No filter: every completed sale, newest change first. A sale changed after `until` is left to the next
        # run; the first page that reaches one changed before `since` is the last (the rest are older still).
        for page in self._pages("Sale.json", params, "Sale", typed):
            moments = [_update_time(row) for row in page]
            yield [row for row, moment in zip(page, moments) if moment is None or since <= moment <= until]
            if any(moment is not None and moment < since for moment in moments):
                return

    def _refused(self, refused: _Refused, what: str) -> None:
        """The reading in use was refused: the next one, or the run fails when none is left."""
        if self._reading + 1 >= len(_READINGS):
            raise RunFailed(f"Lightspeed refused {what}: {refused}") from None
        self._refusal = self._refusal or str(refused)
        self._reading += 1

    def _settled(self) -> None:
        """Says once which reading the run uses, when it is not the first: a warning only for one that may miss
        changes."""
        if self._reading and not self._warned:
            self._warned = True
            reading = _READINGS[self._reading]
            log.log(logging.WARNING if reading.lossy else logging.INFO,
                    "Lightspeed refused filtering on updatetime (%s); %s", self._refusal, reading.note)

    def count_sales(self, since: datetime, until: datetime) -> int:
        """How many completed sales `sales(since, until)` would read: one request (`count=1`, 10 drips), which
        answers only `{"@attributes": {"count": "N"}}` (fact sheet §2). With the unfiltered reading, the count is
        of the sales completed or changed before completion in the window (`timeStamp`): an estimate, as what it
        is for (choosing bulk writing) needs no more."""
        while True:
            reading = _READINGS[self._reading]
            params = {reading.filtered_on or "timeStamp": f"><,{lightspeed_time(since)},{lightspeed_time(until)}",
                      "completed": "true", "count": "1"}
            try:
                body = self._get(f"{self._base}/Sale.json", params, _decoded)
            except _Refused as refused:
                if reading.filtered_on is None:  # the estimate's filter, not the reading's
                    raise RunFailed(f"Lightspeed refused to count sales: {refused}") from None
                self._refused(refused, "to count sales")  # as `sales` does; it says so when it reads
                continue
            count = str(((body if isinstance(body, dict) else {}).get("@attributes") or {}).get("count", ""))
            if not count.isdigit():
                raise RunFailed("Lightspeed answered a sale count without a count")
            return int(count)

    def sales_by_id(self, sale_ids: list[int], raw: bool = False) -> Iterator[list[Row]]:
        """The given sales, whatever their time (parked sales, voided ones), as `sales` gives them."""
        relations = json.dumps(SALE_RELATIONS, separators=(",", ":"))
        return self._by_id("Sale", "saleID", sale_ids, {"load_relations": relations}, typed=not raw)

    def voided_sale_ids(self, since: datetime, until: datetime) -> list[int]:
        """Sales voided in the window, from the SaleVoid feed: the authoritative record of voids (§9), in case
        a void does not move the sale's own update time. Reading it needs a scope not every app has, so a 403
        only means the feed is not used. Filtering it on `createTime` is nowhere documented (the sheet shows it
        sortable by saleVoidID, and polled by ID): refused, the feed is read newest void first instead."""
        params = {"createTime": f"><,{lightspeed_time(since)},{lightspeed_time(until)}", "sort": "saleVoidID",
                  "limit": str(PAGE_SIZE)}
        try:  # no scope, no endpoint: the feed is not used; an outage still fails the run
            try:
                return [sale_id for page in self._pages("SaleVoid.json", params, "SaleVoid")
                        for row in page if (sale_id := _voided_sale_id(row))]
            except _Refused as refused:
                if refused.status == 403:
                    raise
                log.info("Lightspeed refused the SaleVoid feed's createTime filter (%s); reading it newest first",
                         refused)
            return self._voided_newest_first(since, until)
        except _Refused as refused:
            log.info("SaleVoid feed unavailable (%s); relying on the sales' update time", refused)
            return []

    def _voided_newest_first(self, since: datetime, until: datetime) -> list[int]:
        """The feed without a filter, newest void first, down to the first page that reaches one created before
        `since` (voids are numbered as they are made, so the rest are older still)."""
        sale_ids = []
        for page in self._pages("SaleVoid.json", {"sort": "-saleVoidID", "limit": str(PAGE_SIZE)}, "SaleVoid"):
            moments = [_moment(row.get("createTime")) for row in page]
            sale_ids += [sale_id for row, moment in zip(page, moments)
                         if (sale_id := _voided_sale_id(row)) and (moment is None or since <= moment <= until)]
            if any(moment is not None and moment < since for moment in moments):
                break
        return sale_ids

    def customers_by_id(self, customer_ids: list[int], raw: dict[int, dict] | None = None) -> dict[int, Customer]:
        """Customers (with their Contact), for sales that came without the Customer relation; `raw` collects
        the payloads as sent (for mapped fields)."""
        pages = self._by_id("Customer", "customerID", customer_ids,
                            {"archived": "true", "load_relations": json.dumps(["Contact"])})
        return {c.customer_id: c for page in pages for c in _valid("Customer", _kept(page, "customerID", raw))}

    def items_by_id(self, item_ids: list[int]) -> dict[int, Item]:
        """Items (archived ones included), for sale lines that came without their Item. Refused: none, with a
        warning, as a reference list is (`_reference`): the lines are written without product fields and named as
        incomplete. An outage still fails the run."""
        pages = self._by_id("Item", "itemID", item_ids, {"archived": "true"})
        try:
            return {item.item_id: item for page in pages for item in _valid("Item", page)}
        except _Refused as refused:
            log.warning("Lightspeed refused the Item query (%s): lines without their Item are written without "
                        "product fields", refused)
            return {}

    def customers_changed(self, since: datetime, until: datetime,
                          raw: dict[int, dict] | None = None) -> Iterator[list[Customer]]:
        """Pages of the customers (with their Contact, archived ones included) created or changed in [since, until];
        `raw` collects the payloads as sent.

        Two searches, because the fact sheet does not say whether editing a customer's email, phones or address
        (its Contact) moves the Customer's `timeStamp`: the Customer's `timeStamp`, then the loaded Contact's
        (§2: a loaded relation is searchable one level deep) for the customers whose own `timeStamp` is before the
        window. A customer created in the window has both in it: searched by the Contact's alone, every one would
        be read twice. One whose own `timeStamp` is after the window changed after it, and is read by the window
        that holds that change (a sync's next run). Should Lightspeed refuse the second search, the first alone is
        used, with a warning.
        """
        window = f"><,{lightspeed_time(since)},{lightspeed_time(until)}"
        common = {"sort": "customerID", "archived": "true", "limit": str(PAGE_SIZE),
                  "load_relations": json.dumps(["Contact"], separators=(",", ":"))}
        searches = (("timeStamp", {"timeStamp": window}),
                    ("Contact.timeStamp", {"Contact.timeStamp": window, "timeStamp": f"<,{lightspeed_time(since)}"}))
        for field_name, search in searches:
            try:
                for page in self._pages("Customer.json", {**search, **common}, "Customer"):
                    yield _valid("Customer", _kept(page, "customerID", raw))
            except _Refused as refused:
                if field_name == "timeStamp":
                    raise RunFailed(f"Lightspeed refused the Customer query: {refused}") from None
                log.warning("Lightspeed refused searching customers by Contact.timeStamp (%s): a change to a "
                            "customer's email or phones alone may not be read until the customer changes", refused)

    def _by_id(self, resource: str, id_field: str, ids: list[int], params: dict[str, str],
               typed: bool = False) -> Iterator[list[Any]]:
        for start in range(0, len(ids), 100):  # IN takes at most 100 values (fact sheet §2)
            chunk = ",".join(str(i) for i in ids[start:start + 100])
            yield from self._pages(f"{resource}.json", {id_field: f"IN,[{chunk}]", "limit": str(PAGE_SIZE), **params},
                                   resource, typed)

    # Archived shops and categories still name the sales made in them: `archived=true` returns both (§2).
    def shops(self, raw: dict[int, dict] | None = None) -> dict[int, Shop]:
        return {shop.shop_id: shop for page in self._reference("Shop")
                for shop in _valid("Shop", _kept(page, "shopID", raw))}

    def categories(self) -> dict[int, Category]:
        return {c.category_id: c for page in self._reference("Category") for c in _valid("Category", page)}

    def _reference(self, key: str) -> list[list[dict[str, Any]]]:
        """Every page of a reference list (shops, categories), archived ones included. Refused (the fact sheet
        documents no Category endpoint, and no scope for either): none, with a warning; each sale is then written
        without those names and named as incomplete. An outage still fails the run."""
        try:
            return list(self._pages(f"{key}.json", {"limit": str(PAGE_SIZE), "archived": "true"}, key))
        except _Refused as refused:
            log.warning("Lightspeed refused the %s list (%s): sales are written without %s names", key, refused,
                        key.lower())
            return []

    def sales_completed_between(self, since: datetime, until: datetime) -> Iterator[list[dict[str, Any]]]:
        """Pages of completed sales whose completion time lies in [since, until], earliest first, without
        relations: `reconcile` needs only the sale's own fields. `archived=true` so that none is hidden (§2)."""
        window = f"><,{lightspeed_time(since)},{lightspeed_time(until)}"
        params = {"completeTime": window, "sort": "completeTime", "completed": "true", "archived": "true",
                  "limit": str(PAGE_SIZE)}
        yield from self._pages("Sale.json", params, "Sale")

    def _pages(self, resource: str, params: dict[str, str], key: str, typed: bool = False) -> Iterator[list[Any]]:
        """Follows `@attributes.next` exactly as given until it is empty (fact sheet §3). The rows of each page as
        dicts; with `typed` (Sale pages), as Sales, unless one of them does not read.

        Only the first page's refusal is a `_Refused`, which callers may take for a query, a filter or a scope
        Lightspeed does not take and read otherwise or do without: past it, the query was taken, and a refused
        `next` (a cursor Lightspeed no longer takes) fails the run rather than leave the pages after it unread."""
        url: str | None = f"{self._base}/{resource}"
        query: dict[str, str] | None = params
        seen: set[int] = set()
        while url:
            try:
                rows, next_url = self._get(url, query, partial(_page, key=key, typed=typed, path=_path(url)))
            except _Refused as refused:
                if query is not None:
                    raise
                raise RunFailed(f"Lightspeed refused the {key} query past its first page: {refused}") from None
            yield rows
            if hash(next_url) in seen:
                raise RunFailed(f"Lightspeed returned the same next page twice for {resource}; stopping")
            seen.add(hash(next_url))  # not the URLs themselves: 600 characters a page, a backfill reads thousands
            url, query = next_url or None, None

    # -- one request, paced and retried
    def _room(self) -> float:
        """Waits until the bucket has room for one more request and counts it in: its cost."""
        with self._turn:
            while True:
                with self._state:
                    wait = self.bucket.wait_before_next(time.monotonic())
                    if wait <= 0:
                        cost = self.bucket.pour(time.monotonic())
                        self._in_flight += cost
                        return cost
                time.sleep(wait)

    def _answered(self, cost: float, response: httpx.Response | None) -> None:
        with self._state:
            self._in_flight -= cost
            if response is not None:
                self.requests += 1
                self.bucket.update(response.headers, time.monotonic(), self._in_flight)
                self.throttled += response.status_code == 429

    def _get(self, url: str, params: dict[str, str] | None, read: Callable[[bytes], R]) -> R:
        """`read(body)` of the first good answer; a body it cannot read (ValueError) is asked for again."""
        refreshed = False

        def smaller(why: str) -> bool:
            """The same page asked for with half as many rows (the next links keep the size), if it can shrink:
            a heavy page fails with 500s or timeouts (fact sheet §2)."""
            nonlocal url, params
            shrunk = _smaller_page(url, params)
            if shrunk is None:
                return False
            url, params = shrunk
            log.info("Lightspeed %s on a page; asking for %s rows a page", why,
                     (params or {}).get("limit") or httpx.URL(url).params.get("limit"))
            return True

        for attempt in range(_ATTEMPTS):
            cost = self._room()
            token = self._auth.access_token()
            try:
                # The body is read out of a streamed response, so that only this client holds it: an httpx
                # response and its stream refer to each other, and a response holding a page (600 KB) would
                # wait for the cyclic garbage collector instead of going as soon as the page is read.
                with self._http.stream("GET", url, params=params, headers={
                        "Authorization": f"Bearer {token}", "Accept": "application/json"}) as response:
                    content = b"".join(response.iter_bytes()) if response.status_code == 200 else response.read()
            except httpx.TransportError as error:
                self._answered(cost, None)
                self._backoff(attempt, f"{type(error).__name__} on {_path(url)}")
                if isinstance(error, httpx.TimeoutException) and attempt >= 1:
                    smaller("timed out twice")
                continue
            self._answered(cost, response)
            self._note_date(response.headers.get("date"), time.monotonic())
            status = response.status_code
            if status == 200:
                try:
                    return read(content)
                except ValueError:
                    self._backoff(attempt, f"unreadable JSON from {_path(url)}")
                    continue
            if status == 401 and not refreshed:
                self._auth.refresh(rejected=token)
                refreshed = True
                continue
            if status == 429:
                delay = _float(response.headers.get("retry-after")) or 1.0
                log.info("Lightspeed rate limit (%s); waiting %.0f s",
                         response.headers.get("x-ls-api-ratelimit-type", "429"), delay)
                time.sleep(delay)
                continue
            if status == 504 and smaller("timed out"):
                continue
            if status >= 500 or (status == 400 and "try again" in _message(response).lower()):
                # 400 "Please try again later." is a passing refusal (fact sheet §8, tap-lightspeed-rseries)
                self._backoff(attempt, f"HTTP {status} on {_path(url)}")
                if status >= 500 and attempt >= 1:  # the same page failed twice: maybe it is too heavy
                    smaller(f"answered HTTP {status} twice")
                continue
            if status in (400, 403, 404, 422):
                raise _Refused(f"HTTP {status}: {_message(response)}" + (_scope_hint(url) if status == 403 else ""),
                               status)
            if status == 401:  # a token refreshed a moment ago: revoked behind it (fact sheet §7)
                raise RunFailed(f"Lightspeed refused a freshly refreshed access token on {_path(url)} (HTTP 401: "
                                f"{_message(response)}): the app was disconnected in Lightspeed or the employee who "
                                "authorised it is locked; re-authorise the app (docs/runbook.md, Re-authorising "
                                "Lightspeed)")
            raise RunFailed(f"Lightspeed answered HTTP {status} on {_path(url)}: {_message(response)}")
        raise RunFailed(f"Lightspeed kept failing on {_path(url)} after {_ATTEMPTS} attempts")

    @staticmethod
    def _backoff(attempt: int, what: str) -> None:
        if attempt + 1 >= _ATTEMPTS:
            raise RunFailed(f"Lightspeed kept failing: {what}")
        delay = pause(attempt)
        log.info("Lightspeed: %s; retrying in %.1f s", what, delay)
        time.sleep(delay)


def _kept(rows: list[dict[str, Any]], id_field: str, raw: dict[int, dict] | None) -> list[dict[str, Any]]:
    """The rows, unchanged; with `raw`, each is also kept there by its ID."""
    if raw is not None:
        raw.update({int(row[id_field]): row for row in rows if str(row.get(id_field, "")).strip().isdigit()})
    return rows


def _update_time(row: Row) -> datetime | None:
    """A sale's update time, in either spelling (§4.6), read as a `Sale` or not; None when it has none that reads."""
    if not isinstance(row, dict):
        return row.update_time
    return _moment(next((value for key, value in row.items() if key.lower() == "updatetime" and value), None))


def _moment(text: Any) -> datetime | None:
    """A Lightspeed timestamp (§4.4), in UTC when it names no offset; None when it does not read."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _voided_sale_id(row: dict[str, Any]) -> int:
    """The sale a SaleVoid row voids; 0 when it names none."""
    sale_id = str(row.get("saleID", "0")).strip()
    return int(sale_id) if sale_id.isdigit() else 0


def _page(content: bytes, key: str, typed: bool, path: str) -> tuple[list[Any], str]:
    """A list page's rows and its `next` link: Sales when `typed` and every one of them reads, else the rows as
    dicts (ValueError when the body is not JSON)."""
    body = _decoded(content)
    if not isinstance(body, dict):
        raise RunFailed(f"Lightspeed answered {path} with something other than an object")
    rows = _models().sale_page(body) if typed and body.get("Sale") else None
    return rows if rows is not None else one_or_many(body, key), (body.get("@attributes") or {}).get("next") or ""


# Bodies up to this size are read by the standard library, larger ones by pydantic-core: a run whose answers are
# all small (a no-op sync: the account, an empty SaleVoid list, an empty Sale page) never imports pydantic-core,
# 0.03 CPU s of the 0.3 such a run takes (docs/performance.md). A page of sales is 0.5 to 0.7 MB.
SMALL_BODY = 64 * 1024


def _decoded(content: bytes) -> Any:
    """A body's JSON. For a page, pydantic's parser is faster than the standard library's, and gives each
    repeated short value ("0", "false", a timestamp) as one shared string: a page held in memory takes half the
    room."""
    if len(content) <= SMALL_BODY:
        return json.loads(content)
    from pydantic_core import from_json

    try:
        return from_json(content, cache_strings="all")
    except ValueError:  # what it refuses and the standard library takes (a BOM, a lone surrogate escape)
        return json.loads(content)


def _valid(name: str, rows: list[dict[str, Any]]) -> list[Any]:
    """The rows that validate as the model `name`; a malformed one is logged and left out (its sales then lack
    its name)."""
    valid: list[Any] = []
    if not rows:
        return valid
    model = getattr(_models(), name)
    for row in rows:
        try:
            valid.append(model.of(row))
        except InvalidPayload as error:
            log.warning("skipped a malformed Lightspeed %s: %s", model.__name__, error)
    return valid


def _models() -> Any:
    """The pydantic models, imported when the first row is to be read: a run that reads nothing never loads
    pydantic (a no-op sync is all start-up, docs/performance.md)."""
    from lspos_sync.lightspeed import models

    return models


def _smaller_page(url: str, params: dict[str, str] | None) -> tuple[str, dict[str, str] | None] | None:
    """The same request with half the page size, or None when the page is already small."""
    current = (params or {}).get("limit") or httpx.URL(url).params.get("limit") or str(PAGE_SIZE)
    smaller = int(current) // 2
    if smaller < MIN_PAGE_SIZE:
        return None
    if params is not None:
        return url, {**params, "limit": str(smaller)}
    return str(httpx.URL(url).copy_set_param("limit", str(smaller))), None


# The scope each entity is read with (fact sheet §1): a 403 there most likely means the app lacks it.
_SCOPES = {"Sale": "employee:register_read", "Customer": "employee:customers_read",
           "SaleVoid": "employee:admin_void_sale"}


def _scope_hint(url: str) -> str:
    entity = _path(url).rsplit("/", 1)[-1].split(".", 1)[0]
    scope = _SCOPES.get(entity)
    return f" (reading {entity} needs the scope {scope}: authorise the app with it, docs/setup.md)" if scope else ""


class _Refused(RunFailed):
    """Lightspeed refused the request itself (400): retrying the same request cannot help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _path(url: str) -> str:
    return httpx.URL(url).path


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body)[:200]
    except ValueError:
        return response.text[:200]
