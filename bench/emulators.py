"""The product's emulators, made to answer the benchmark's volumes in constant time per request.

The emulators are built for correctness, not volume: the Lightspeed one renders and sorts every sale on each
page, and the Salesforce one compares every row with every value of an `IN (...)` or `LIKE` list. At 10,000
sales that is minutes of emulator time, which would land in the sync's wall time and hide what the sync itself
costs. So, in the benchmark process only:

* Sale list pages are served from a cached order of the sales matching the query (bisect to the cursor), then
  the product emulator renders the page from just those rows: same filters, order, cursors and bodies. The
  cache assumes what the benchmark does: no sale changes once seeded.
* SOQL `IN` on strings is a set lookup, and an `OR` of digit-only `LIKE` patterns (the phone lookup) is
  answered from each stored value's digit subsequences: both give exactly the rows the regexes give.

* Responses are not held back by Nagle's algorithm (see `install`), a 40 ms stall a request that no real API
  has.

Both emulators also record the time spent in their request handlers (not counting the injected latency), so
the benchmark can say how much of the wall time the emulators themselves took.
"""

from __future__ import annotations

import bisect
import itertools
import re
import socketserver
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from lspos_sync.emulators import lightspeed as ls_module
from lspos_sync.emulators import soql
from lspos_sync.emulators.http import Request, Response
from lspos_sync.emulators.lightspeed import LightspeedEmulator
from lspos_sync.emulators.salesforce import SalesforceEmulator


class _Timed:
    """Adds up the seconds an emulator spends inside its request handler (`busy`)."""

    busy = 0.0

    def _handle(self, request: Request) -> Response:
        began = time.perf_counter()
        try:
            return super()._handle(request)
        finally:
            self.busy += time.perf_counter() - began


class BenchLightspeed(_Timed, LightspeedEmulator):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.charges: list[tuple[float, bool]] = []  # (cost, let through) of every API request, in order
        self._orders: dict[tuple, tuple[list[tuple], list[int]]] = {}
        self._plain: dict[int, dict] = {}  # sale id -> the sale rendered without relations
        self._view: dict[int, Any] | None = None


    def _charge(self, cost: float) -> tuple[dict[str, str], Response | None]:
        headers, limited = super()._charge(cost)
        self.charges.append((cost, limited is None))
        return headers, limited

    def _table(self, name: str) -> dict[int, Any]:
        if name == "Sale" and self._view is not None:
            return self._view
        return super()._table(name)

    def _list(self, request: Request, name: str, kind: Any, relations: frozenset[str]) -> dict:
        limit_text = request.arg("limit") or "100"
        sort_text = request.arg("sort") or kind.id_field
        if (name != "Sale" or request.arg("before") or sort_text.startswith("-") or not limit_text.isdigit()
                or int(limit_text) > 100):
            return super()._list(request, name, kind, relations)
        signature = (len(self._sales), tuple(sorted((k, tuple(v)) for k, v in request.query.items()
                                                    if k not in ("after", "before", "limit", "load_relations"))))
        order = self._orders.get(signature)
        if order is None:
            try:
                order = self._orders[signature] = self._order(request, kind, sort_text)
            except (ls_module._ApiError, ValueError):  # a malformed query: the emulator's own answer, error included
                return super()._list(request, name, kind, relations)
        keys, ids = order
        after = request.arg("after")
        start = bisect.bisect_right(keys, self._decode_cursor(after, sort_text, kind)) if after else 0
        self._view = {sale_id: self._sales[sale_id] for sale_id in ids[start:start + int(limit_text)]}
        try:
            return super()._list(request, name, kind, relations)
        finally:
            self._view = None

    def _order(self, request: Request, kind: Any, sort_field: str) -> tuple[list[tuple], list[int]]:
        """The keys and ids of every sale the query matches, in the emulator's order (as its `_list` computes)."""
        tests = [self._filter("Sale", key, values[-1], frozenset()) for key, values in request.query.items()
                 if key not in ls_module._CONTROL]
        archived = (request.arg("archived") or "false").lower()
        if len(self._plain) != len(self._sales):
            self._plain = {sale_id: self._render("Sale", sale_id, frozenset()) for sale_id in self._sales}
        rows = list(self._plain.values())
        if archived != "true":
            rows = [r for r in rows if (r.get("archived") == "true") == (archived == "only")]

        def key(row: dict) -> tuple:
            if sort_field == kind.id_field:
                return (int(row[kind.id_field]),)
            return ls_module._rank(sort_field, row.get(sort_field)), int(row[kind.id_field])

        ordered = sorted((r for r in rows if all(test(r) for test in tests)), key=key)
        return [key(r) for r in ordered], [int(r[kind.id_field]) for r in ordered]

    def api_requests(self) -> int:
        return sum(1 for r in self.requests if r.path.startswith("/API/"))

    def throttled(self) -> int:
        return sum(1 for r in self.requests if r.status == 429)


class BenchSalesforce(_Timed, SalesforceEmulator):
    """The Salesforce emulator, timed, and (`record_work` seconds a record) as slow as a real org's own work on
    the records of a `/composite` request: its triggers, rules and indexes, on top of the request's latency.

    The emulator's own handling of those records (parsing, validating, indexing: its handler time) is that
    work, done on this machine: a request sleeps only for what the org's work has left after it (`absorbed` adds
    up the handler time so covered). Otherwise every write would wait for both the modelled org and the
    emulator's Python, a time no real org adds and the floor cannot count."""

    def __init__(self, *args: Any, record_work: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record_work = record_work
        self.work = 0.0  # seconds of record work modelled, which the API-bound floor includes
        self.absorbed = 0.0  # seconds of handler time that were part of that work

    def _handle(self, request: Request) -> Response:
        began = time.perf_counter()
        response = super()._handle(request)
        if self.record_work and request.path.rstrip("/").endswith("/composite"):
            records = written_records(self.requests[-1].body)
            if records:
                work, spent = records * self.record_work, time.perf_counter() - began
                self.work += work
                self.absorbed += min(spent, work)
                if work > spent:
                    time.sleep(work - spent)
        return response


def written_records(body: Any) -> int:
    """The records a `/composite` request writes or deletes (its queries write none)."""
    count = 0
    for sub in (body or {}).get("compositeRequest", []) if isinstance(body, dict) else ():
        if "/query" in sub.get("url", ""):
            continue
        if sub.get("method") == "DELETE":
            count += sub["url"].split("ids=", 1)[-1].split("&")[0].count(",") + 1
        elif isinstance(sub.get("body"), dict):
            count += len(sub["body"].get("records", []))
    return count


# ---------------------------------------------------------------------------------------------- SOQL
_original_evaluate = soql._evaluate
_DIGIT_LIKE = re.compile(r"\^((?:\.\*\d)+)(\.\*)?\$")  # what `%4%1%5...%4` (or `...%4%`) compiles to
_cache: dict[int, tuple[Any, Any]] = {}


def _fast_evaluate(node: Any, get: Callable[[str], Any]) -> bool:
    entry = _cache.get(id(node))
    if entry is None or entry[0] is not node:
        if len(_cache) > 20_000:
            _cache.clear()
        entry = _cache[id(node)] = (node, _compile(node))
    compiled = entry[1]
    if compiled is None:
        return _original_evaluate(node, get)
    return compiled(get)


def _compile(node: Any) -> Callable[[Callable[[str], Any]], bool] | None:
    """A faster predicate for the node, or None to let the emulator's evaluator answer."""
    if isinstance(node, soql.Comparison) and node.op in ("IN", "NOT IN") and \
            all(type(v) is str for v in node.value):
        wanted = frozenset(v.casefold() for v in node.value)
        field, negated = node.field, node.op == "NOT IN"

        def among(get: Callable[[str], Any]) -> bool:
            actual = get(field)
            if actual is None:
                return negated
            return (isinstance(actual, str) and actual.casefold() in wanted) != negated
        return among
    if isinstance(node, soql.Junction) and node.op == "OR" and node.parts and all(
            isinstance(p, soql.Comparison) and p.op == "LIKE" and p.value.flags & re.DOTALL and _digits_of(p.value.pattern)
            for p in node.parts):
        # field -> pattern length -> last digit -> the leading digits of each pattern ending on its last digit;
        # field -> pattern length -> the digits of each pattern ending in `%` (an extension may follow)
        patterns: dict[str, dict[int, dict[str, set[str]]]] = {}
        open_ended: dict[str, dict[int, set[str]]] = {}
        for part in node.parts:
            digits = _digits_of(part.value.pattern)
            if part.value.pattern.endswith(".*$"):
                open_ended.setdefault(part.field, {}).setdefault(len(digits), set()).add(digits)
            else:
                patterns.setdefault(part.field, {}).setdefault(len(digits), {}).setdefault(
                    digits[-1], set()).add(digits[:-1])

        def any_like(get: Callable[[str], Any]) -> bool:
            for field, by_length in open_ended.items():
                value = get(field)
                if isinstance(value, str) and value:
                    every = "".join(ch for ch in value if ch in "0123456789")
                    if any(_has_subsequence(every, length, wanted) for length, wanted in by_length.items()):
                        return True
            for field, by_length in patterns.items():
                value = get(field)
                if not isinstance(value, str) or not value:
                    continue
                value = value.removesuffix("\n")  # `$` also matches before one final newline
                if not value or value[-1] not in "0123456789":
                    continue
                head = "".join(ch for ch in value[:-1] if ch in "0123456789")
                for length, by_last in by_length.items():
                    leading = by_last.get(value[-1])
                    if leading and _has_subsequence(head, length - 1, leading):
                        return True
            return False
        return any_like
    return None


@lru_cache(maxsize=4096)
def _digits_of(pattern: str) -> str:
    """'4155550134' for the regex of `%4%1%5%5%5%5%0%1%3%4`, else ''."""
    match = _DIGIT_LIKE.fullmatch(pattern)
    return re.sub(r"[^0-9]", "", match.group(1)) if match else ""


def _has_subsequence(head: str, size: int, wanted: set[str]) -> bool:
    """Whether one of `wanted` (strings of `size` digits) is a subsequence of `head`."""
    if size == 0:
        return "" in wanted
    if len(head) < size:
        return False
    if len(head) - size <= 4:
        return not wanted.isdisjoint(_subsequences(head, size))
    return any(_is_subsequence(w, head) for w in wanted)


@lru_cache(maxsize=200_000)
def _subsequences(head: str, size: int) -> frozenset[str]:
    return frozenset("".join(c) for c in itertools.combinations(head, size))


def _is_subsequence(needle: str, haystack: str) -> bool:
    rest = iter(haystack)
    return all(ch in rest for ch in needle)


def install() -> None:
    """Switch the SOQL evaluator of this process to the faster one (the emulators only; nothing else uses it),
    and turn Nagle's algorithm off on the emulators' connections: their handler writes the headers and the
    body of a response separately, so each response otherwise waits ~40 ms for the client's delayed ACK."""
    soql._evaluate = _fast_evaluate
    socketserver.StreamRequestHandler.disable_nagle_algorithm = True
