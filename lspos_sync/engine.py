"""The run: window -> Lightspeed pages -> resolve customers -> map -> write -> checkpoint.

Every command is a way of calling `Engine.run`: `sync` with the live checkpoint, `backfill` with an
explicit window that never touches it, `dry-run` with a sink that records instead of writing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from queue import Empty, Queue
from typing import Any, Callable, Iterable, Iterator

from lspos_sync import mapping, rollups
from lspos_sync.customer_feed import CustomerFeed
from lspos_sync.customers import (AMBIGUOUS, CREATED, GUEST, Candidates, Resolution, claim_accounts,
                                  customer_phones, normalise_email, primary_email, resolve)
from lspos_sync.errors import RunFailed
from lspos_sync.fieldmap import DEFAULT, FieldMap
from lspos_sync.lightspeed.client import LightspeedClient
from lspos_sync.lightspeed.models import Category, Customer, InvalidPayload, RawSale, Sale, Shop
from lspos_sync.salesforce import queries
from lspos_sync.salesforce.writer import (CREATE_ACCOUNTS, DELETE_LINES, LINES, UPDATE_ACCOUNTS, TRANSACTIONS,
                                          Sink, Write)
from lspos_sync.state import StateStore, iso

log = logging.getLogger(__name__)

# Sales resolved and written together: their lookups, then about 4,400 records (3 lines a sale on average,
# plus accounts to create or stamp) in 22 or so collections, which the writer packs five to a /composite
# request, filling the last one with the next batch's lookups.
BATCH_SALES = 1000
# Customer decisions kept for later batches (never fewer than three batches' worth): a customer forgotten is
# looked up again, by the key the run stamped, at the cost of a few characters in a statement. More kept made a
# 100,000-sale backfill hold 2 MB more than a 10,000-sale one (docs/performance.md).
RESOLVED_KEPT = 3_000


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime


@dataclass(slots=True)
class SalePlan:
    """What happened (or, in dry-run, would happen) to one sale: the line an admin reads."""

    sale_id: int
    sale_key: str
    ticket: str
    status: str
    total: float
    lines: int
    match: str
    account_id: str | None
    reason: str
    action: str  # create, update, unchanged, rejected
    error: str | None = None
    added: dict[str, Any] | None = None  # the transaction's fields added by the mapping file, by org name

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass
class _Batch:
    """A batch whose writes are on their way. It is settled (outcomes stored, progress moved) once every
    one is answered, and batches are settled in the order they were read."""

    progress: datetime | None  # once it is settled, every sale changed up to here is written or parked
    sales: list[tuple[str, int, str]] = field(default_factory=list)  # (sale key, sale id, content hash)
    writes: list[Write] = field(default_factory=list)
    plans: dict[str, SalePlan] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)  # sale keys whose transaction was looked up before writing
    line_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)  # of the sales not checked
    # LSPOS_ROLLUPS: per sale (sale key, customer key, account linked before, whether it was in Salesforce,
    # what it adds to the account's roll-ups)
    rollups: list[tuple[str, str | None, str | None, bool, rollups.Contribution]] = field(default_factory=list)
    followed_up: bool = False


@dataclass
class RunSummary:
    command: str
    account_id: str
    window: Window | None
    sales_read: int = 0
    written: int = 0
    unchanged: int = 0
    skipped_open: int = 0
    records: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    # by sale key, so that a sale read twice in a run (look-back, void feed, re-read page) is named once, as last read
    ambiguous: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps: dict[str, dict[str, Any]] = field(default_factory=dict)  # sales written with data Lightspeed did not send
    enriched: list[dict[str, Any]] = field(default_factory=list)  # accounts whose empty fields were filled
    rollups: dict[str, Any] | None = None  # LSPOS_ROLLUPS: accounts recomputed, updated, their changes
    plans: list[SalePlan] = field(default_factory=list)
    progress: datetime | None = None  # every sale changed up to here is written or parked
    retried: int = 0
    customers: dict[str, Any] | None = None  # LSPOS_SYNC_CUSTOMERS: the customer feed's report (customer_feed.py)

    @property
    def exit_code(self) -> int:
        return 3 if self.rejected or (self.rollups and self.rollups["rejected"]) or (
            self.customers and self.customers["rejected_customers"]) else 0


class Engine:
    def __init__(self, account_id: str, store: StateStore, lightspeed: LightspeedClient, sink: Sink, *,
                 dry_run: bool, phone_region: str, person_record_type: str, verify_unchanged: bool = False,
                 enrich_profiles: bool = False, field_map: FieldMap = DEFAULT, roll_up: bool = False,
                 on_batch: Callable[[int, RunSummary], None] | None = None, sync_customers: bool = False) -> None:
        self.account_id = account_id
        self.store = store
        self.lightspeed = lightspeed
        self.sink = sink
        self.dry_run = dry_run
        self.region = phone_region
        self.person_record_type = person_record_type
        self.verify_unchanged = verify_unchanged
        self.enrich_profiles = enrich_profiles
        self.field_map = field_map
        self.roll_up = roll_up
        self.on_batch = on_batch
        self._shops: dict[int, Shop] | None = None  # read once, when the first sale needs them
        self._categories: dict[int, Category] = {}
        self._record_type_id: str | None = None  # "" when the org has none
        self._like = True  # until Salesforce refuses a phone LIKE
        # customer key -> decision, for the customers of recent batches: one decided longer ago is looked up
        # again if it comes back (by then it has its key), so memory stays flat over long windows.
        # (never fewer than three batches' worth: the batch written and the one on its way use theirs)
        self._resolved: _Recent[str, Resolution] = _Recent(max(RESOLVED_KEPT, 3 * BATCH_SALES))
        self._in_flight: deque[_Batch] = deque()
        self._progress: Callable[[datetime], None] | None = None
        # Lightspeed payloads as sent, kept for the batch at hand only when the mapping adds fields.
        self._payloads: dict[int, dict[str, Any]] = {}
        self._raw_customers: dict[int, dict[str, Any]] = {}
        self._raw_shops: dict[int, dict[str, Any]] = {}
        # LSPOS_ROLLUPS: a real run keeps the accounts whose transactions changed in the state store, batch by
        # batch, so that a run that stops before its roll-ups leaves them to the next one. A dry-run keeps
        # them here, with what it would write (by account Id, or customer key for accounts it would create)
        # and the sale keys to leave out of Salesforce's aggregates.
        self._touched: set[str] = set()
        self._planned: dict[str, list[rollups.Contribution]] = {}
        self._superseded: dict[str, list[str]] = {}
        self.customer_feed = CustomerFeed(  # LSPOS_SYNC_CUSTOMERS: clients without a sale, before the sales
            account_id, store, lightspeed, sink, dry_run=dry_run, region=phone_region, enrich_profiles=enrich_profiles,
            look_up=lambda customers: self._look_up(customers, [])[0], record_type_id=self._person_record_type_id,
            field_map=field_map) if sync_customers else None

    def run(self, command: str, window: Window, *, progress: Callable[[datetime], None] | None = None,
            limit: int | None = None, retry_rejects: bool = True) -> RunSummary:
        """Runs the window. `progress(t)` is called whenever every sale changed up to `t` is written or
        parked, last with the window's end: `sync` moves its checkpoint there, `backfill` its resume point."""
        summary = RunSummary(command, self.account_id, window)
        self._progress = progress
        if self.customer_feed is not None:
            summary.customers = self.customer_feed.run(window.since, window.until, limit)
        if retry_rejects:
            self._retry_parked([r.sale_id for r in self.store.rejects(self.account_id)], summary)
        if limit is None:
            # Voids first: a void that moves no timestamp of its sale is seen only here, and the checkpoint
            # moves with the pages below, so a run that stops half-way must not have skipped this.
            self._process_ids(self.lightspeed.voided_sale_ids(window.since, window.until), summary)
        # Parked sales and voids are written and settled before the pages: met again there, they are unchanged.
        self._drain(summary)
        pages = self.lightspeed.sales(window.since, window.until, raw=self.field_map.needs_raw)
        with closing(_prefetched(pages)) as pages:
            self._read_window(pages, window, summary, progress, limit)
        self._drain(summary)
        self._roll_up(summary)
        if progress and limit is None:
            summary.progress = window.until
            progress(window.until)
        log.info("%s read %d sale(s) from Lightspeed", command, summary.sales_read,
                 extra={"phase": "read", "counts": {"sales": summary.sales_read, "unchanged": summary.unchanged,
                                                    "rejected": len(summary.rejected)}})
        summary.records = dict(self.sink.stats.records)
        return summary

    def _read_window(self, pages: Iterator[list[dict[str, Any]]], window: Window, summary: RunSummary,
                     progress: Callable[[datetime], None] | None, limit: int | None) -> None:
        done, latest, in_order = 0, None, True
        for batch in _batches(self._parse(pages, summary, window), min(BATCH_SALES, limit or BATCH_SALES)):
            batch = batch[:limit - done] if limit is not None else batch
            if batch:
                for sale in batch:
                    moment = sale.last_update
                    if moment is not None:
                        in_order = in_order and (latest is None or moment >= latest)
                        latest = max(latest, moment) if latest else moment
                # Pages come oldest change first, so once this batch is settled every sale changed up to
                # here is written or parked; the look-back re-reads the boundary. Out of order, only the end counts.
                moment = min(latest, window.until) if progress and in_order and latest is not None else None
                self._process(batch, summary, moment)
                done += len(batch)
            if limit is not None and done >= limit:
                break

    def retry(self, sale_ids: list[int]) -> RunSummary:
        """`rejects retry`: only the given parked sales, read afresh from Lightspeed and written again."""
        summary = RunSummary("rejects retry", self.account_id, None)
        self._retry_parked(sale_ids, summary)
        self._drain(summary)
        self._roll_up(summary)
        summary.records = dict(self.sink.stats.records)
        return summary

    def _retry_parked(self, sale_ids: list[int], summary: RunSummary) -> None:
        if sale_ids:
            log.info("retrying %d rejected sale(s) first", len(sale_ids))
            summary.retried = len(sale_ids)
            self._process_ids(sale_ids, summary)

    def _process_ids(self, sale_ids: list[int], summary: RunSummary) -> None:
        """Given sales, read afresh from Lightspeed whatever their time, and written like any other."""
        pages = self.lightspeed.sales_by_id(sale_ids, raw=self.field_map.needs_raw)
        for batch in _batches(self._parse(pages, summary, None)):
            self._process(batch, summary)

    # -- reading
    def _parse(self, pages: Iterable[list[Sale | dict[str, Any]]], summary: RunSummary,
               window: Window | None) -> Iterator[Sale]:
        """Validated, completed sales in the window; a sale Lightspeed sent malformed is parked, not fatal."""
        for page in pages:
            for payload in page:
                summary.sales_read += 1
                if payload.__class__ is Sale:
                    sale = payload
                else:  # a page with a sale that does not read, or a mapping that reads the payloads
                    try:
                        sale = Sale.of(payload)
                    except InvalidPayload as error:
                        self._park_unreadable(payload, error, summary)
                        continue
                if not sale.completed:
                    summary.skipped_open += 1  # written once it completes: completion moves its update time
                    continue
                moment = sale.last_update
                if window is not None and moment is not None and not window.since <= moment <= window.until:
                    continue  # outside the window, whatever the server's filter did
                if self.field_map.needs_raw:
                    self._payloads[sale.sale_id] = payload
                yield sale

    def _park_unreadable(self, payload: dict[str, Any], error: InvalidPayload, summary: RunSummary) -> None:
        reason = f"INVALID_LIGHTSPEED_DATA: {error.where or 'sale'}: {error.problem}"
        try:
            sale_id = int(str(payload.get("saleID") if isinstance(payload, dict) else None))
        except ValueError:
            log.warning("skipped a Lightspeed sale without a usable saleID: %s", reason)
            return
        sale_key = mapping.key(self.account_id, sale_id)
        summary.rejected.append({"sale_key": sale_key, "sale_id": sale_id, "reason": reason})
        if not self.dry_run:
            self.store.record_outcomes(self.account_id, {}, {sale_key: (sale_id, reason)})

    # -- one batch
    def _process(self, sales: list[Sale], summary: RunSummary, progress: datetime | None = None) -> None:
        if self._shops is None:  # a run that reads no sale never asks
            raw_shops = self._raw_shops if self.field_map.needs_raw else None
            self._shops, self._categories = self.lightspeed.shops(raw_shops), self.lightspeed.categories()
        sales = self._with_customers(list({sale.sale_id: sale for sale in sales}.values()))  # latest state once
        built = {}
        for sale in sales:
            transaction = mapping.transaction_record(sale, self.account_id, self._shops)
            lines = mapping.line_records(sale, self.account_id, self._categories)
            if self.field_map.needs_raw:
                self._add_mapped_fields(sale, transaction, lines)
            built[sale.sale_id] = (transaction, lines,
                                   mapping.content_hash(transaction, lines, self.field_map.fingerprint))
        known = self.store.written([t[mapping.SALE_KEY] for t, _, _ in built.values()])
        if self.verify_unchanged and known:
            # backfill repairs: a sale counts as unchanged only while Salesforce still has it
            present = self._existing(list(known))
            known = {k: v for k, v in known.items() if k in present}
        todo = []
        for sale in sales:
            transaction, lines, digest = built[sale.sale_id]
            previous = known.get(transaction[mapping.SALE_KEY])
            if previous and previous[0] == digest and previous[1] != AMBIGUOUS:
                summary.unchanged += 1
                if self.dry_run:  # the per-sale preview; a real run keeps no per-sale list, so memory stays flat
                    summary.plans.append(self._plan(sale, transaction, lines, previous[1], None, "", "unchanged"))
            else:
                todo.append(sale)
        batch = _Batch(progress)
        if todo:
            started = time.monotonic()
            self._write(todo, built, known, summary, batch)
            log.info("batch of %d sale(s): %d to write, %d unchanged", len(sales), len(todo), len(sales) - len(todo),
                     extra={"phase": "batch", "counts": {"sales": len(sales), "written": len(todo)},
                            "duration_ms": round((time.monotonic() - started) * 1000)})
        self._in_flight.append(batch)
        for sale in sales:
            self._payloads.pop(sale.sale_id, None)
        self._raw_customers.clear()
        self._settle_answered(summary)
        if self.on_batch:
            self.on_batch(len(sales), summary)

    def _add_mapped_fields(self, sale: Sale, transaction: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        """The fields the mapping file adds, filled from the payloads as Lightspeed sent them."""
        raw = RawSale.of(self._payloads.get(sale.sale_id, {}))
        sources = {"sale": raw.sale, "customer": self._customer_payload(sale),
                   "shop": self._raw_shops.get(sale.shop_id) if sale.shop_id is not None else None,
                   "payment": raw.payment}
        transaction.update(self.field_map.added_values(mapping.TRANSACTION, sources))
        if self.field_map.additions.get(mapping.LINE):
            for line, record in zip(sale.lines, lines):  # line_records keeps the sale's line order
                payload = raw.lines.get(line.sale_line_id) or {}
                record.update(self.field_map.added_values(
                    mapping.LINE, {**sources, "line": payload, "item": payload.get("Item")}))

    def _customer_payload(self, sale: Sale) -> dict[str, Any] | None:
        loaded = RawSale.customer_of(self._payloads.get(sale.sale_id, {}))
        if loaded is not None:
            return loaded
        return self._raw_customers.get(sale.customer_id) if sale.customer_id is not None else None

    def _with_customers(self, sales: list[Sale]) -> list[Sale]:
        """Sales whose customer did not come loaded with them get it from the Customer endpoint."""
        missing = sorted({s.customer_id for s in sales if s.customer_id is not None and s.customer is None})
        if not missing:
            return sales
        found = self.lightspeed.customers_by_id(missing, self._raw_customers if self.field_map.needs_raw else None)
        return [s.with_customer(found[s.customer_id]) if s.customer is None and s.customer_id in found
                else s for s in sales]

    def _write(self, sales: list[Sale], built: dict[int, tuple], known: dict[str, tuple[str, str]],
               summary: RunSummary, batch: _Batch) -> None:
        customers = {self._customer_key(s): s.customer for s in sales if s.customer_id is not None and s.customer}
        unresolved = {k: c for k, c in customers.items() if k not in self._resolved}
        for key in customers.keys() - unresolved.keys():
            self._resolved.move_to_end(key)  # this batch's decisions are the newest: the last to be forgotten
        sale_keys = [built[s.sale_id][0][mapping.SALE_KEY] for s in sales]
        # The transactions already in Salesforce are read before writing only where what is written depends on
        # them: sales written before (their stale lines), sales linked to no account (a hand link is kept), and
        # every sale for a dry-run's preview or the roll-ups. Any other sale Salesforce turns out to have (its
        # upsert says so) gets its stale lines deleted after the fact, in `_delete_unexpected_lines`.
        if self.dry_run or self.roll_up:
            checked = set(sale_keys)
        else:
            checked = {key for sale, key in zip(sales, sale_keys)
                       if key in known or not self._links_account(sale, customers)}
        candidates, existing = self._look_up(unresolved, [key for key in sale_keys if key in checked])
        self._resolved.update(claim_accounts({key: resolve(customer, key, candidates, self.region)
                                              for key, customer in unresolved.items()}))
        late = [key for sale, key in zip(sales, sale_keys) if key not in checked and not self._links_account(sale, customers)]
        if late:  # found ambiguous just now
            existing.update(self._existing(late))
            checked.update(late)
        stale = self._stale_lines({record["Id"]: sale_key for sale_key, record in existing.items()},
                                  {t[mapping.SALE_KEY]: {line[mapping.LINE_KEY] for line in lines}
                                   for t, lines, _ in built.values()}) if existing else {}

        writes: list[Write] = []
        dependants: dict[str, list[Sale]] = {}
        for sale in sales:
            if (customer_key := self._customer_key(sale)) in customers:
                dependants.setdefault(customer_key, []).append(sale)
        for customer_key, customer_sales in dependants.items():
            writes.extend(self._account_writes(customer_key, customers[customer_key], customer_sales, built))
            # The run remembers the decision, not the account as found (memory stays flat over long windows),
            # and that its account write is on its way: a later batch links to it and writes it no more.
            decided = self._resolved[customer_key]
            self._resolved[customer_key] = Resolution(decided.status, decided.account_id, decided.reason,
                                                      candidates=decided.candidates)
        for sale in sales:
            transaction, lines, digest = built[sale.sale_id]
            sale_key = transaction[mapping.SALE_KEY]
            customer_key = self._customer_key(sale)
            if customer_key in customers:
                resolution = self._resolved[customer_key]
            elif customer_key is None:
                resolution = resolve(None, None, candidates, self.region)
            else:
                resolution = Resolution(GUEST, reason=f"customer {sale.customer_id} not found in Lightspeed")
            record = {"attributes": _TRANSACTION_TYPE, **transaction, "Match_Status__c": resolution.status}
            linked_by_hand = (existing.get(sale_key) or {}).get("Account__c")
            if resolution.status == CREATED and resolution.account_id is None:
                record["Account__r"] = {mapping.CUSTOMER_KEY: customer_key}
            elif resolution.account_id is None and linked_by_hand:
                # an admin linked this sale by hand: a rule that finds no single account does not undo it
                del record["Match_Status__c"]
            else:
                record["Account__c"] = resolution.account_id
            summary.ambiguous.pop(sale_key, None)
            if resolution.status == AMBIGUOUS:
                summary.ambiguous[sale_key] = {"sale_key": sale_key, "sale_id": sale.sale_id,
                                               "reason": self.field_map.in_org_names(resolution.reason),
                                               "candidates": list(resolution.candidates)}
            summary.gaps.pop(sale_key, None)
            if missing := mapping.gaps(sale, self.account_id, self._shops, self._categories):
                for gap in missing:  # named as the org names them
                    obj = mapping.LINE if gap["line"] else mapping.TRANSACTION
                    gap["left_empty"] = [self.field_map.field(obj, name) for name in gap["left_empty"]]
                summary.gaps[sale_key] = {"sale_key": sale_key, "sale_id": sale.sale_id, "missing": missing}
            keys = (sale_key,)
            writes.append(Write(TRANSACTIONS, record, keys))
            for line in lines:  # hashed already: the record itself goes, typed
                line["attributes"] = _LINE_TYPE
                writes.append(Write(LINES, line, keys))
            writes.extend(Write(DELETE_LINES, line_id, keys) for line_id in stale.get(sale_key, ()))
            action = "update" if sale_key in existing else "create"
            batch.plans[sale_key] = self._plan(sale, transaction, lines, resolution.status, resolution.account_id,
                                               resolution.reason, action)
            batch.sales.append((sale_key, sale.sale_id, digest))
            if sale_key not in checked:
                batch.line_keys[sale_key] = tuple(line[mapping.LINE_KEY] for line in lines)
            if self.roll_up:
                batch.rollups.append((sale_key, customer_key, linked_by_hand, sale_key in existing, rollups.Contribution(
                    transaction["Status__c"], transaction["Total__c"], transaction["Transaction_Date__c"])))
        batch.checked = checked
        self.sink.write(writes)
        # Most are answered by now; of those the batch keeps only what its settling reads.
        batch.writes = [write for write in writes if not write.answered or write.error or write.customer_key
                        or (write.kind == TRANSACTIONS and write.created is not True)]

    def _links_account(self, sale: Sale, customers: dict[str, Customer]) -> bool:
        """Whether the sale is to be linked to an account, as far as is known (a customer not decided yet
        counts as linked)."""
        customer_key = self._customer_key(sale)
        if customer_key is None or customer_key not in customers:
            return False  # a guest
        resolution = self._resolved.get(customer_key)
        return resolution is None or resolution.account_id is not None or resolution.status == CREATED

    def _customer_key(self, sale: Sale) -> str | None:
        return mapping.key(self.account_id, sale.customer_id) if sale.customer_id is not None else None

    # -- batches on their way
    def _settle_answered(self, summary: RunSummary) -> None:
        """Settles the batches whose writes are all answered, oldest first: progress never passes a batch
        that is not settled."""
        while self._in_flight and all(write.answered for write in self._in_flight[0].writes):
            batch = self._in_flight[0]
            if not batch.followed_up:
                batch.followed_up = True
                if self._delete_unexpected_lines(batch):
                    continue  # settled once the deletes are answered too
            self._in_flight.popleft()
            self._settle(batch, summary)

    def _drain(self, summary: RunSummary) -> None:
        """Sends what the writer still holds and settles every batch."""
        while self._in_flight:
            self.sink.flush()
            self._settle_answered(summary)

    def _delete_unexpected_lines(self, batch: _Batch) -> bool:
        """Sales Salesforce already had though nothing said so before writing (a lost state file, a sale
        parked after its transaction went in, another state store): their lines that Lightspeed no longer has
        are deleted now. Whether there were any."""
        unexpected = {write.sale_keys[0]: write for write in batch.writes
                      if write.kind == TRANSACTIONS and not write.error and write.created is not True
                      and write.sale_keys[0] not in batch.checked}
        # A sale written again by a later batch is that batch's to check: its lines may be in Salesforce by now.
        rewritten = {sale_key for later in self._in_flight if later is not batch for sale_key in later.plans}
        unexpected = {sale_key: write for sale_key, write in unexpected.items() if sale_key not in rewritten}
        if not unexpected:
            return False
        key_of = {write.id: sale_key for sale_key, write in unexpected.items() if write.id}
        if len(key_of) < len(unexpected):  # an upsert answered without its Id: read it
            missing = [sale_key for sale_key, write in unexpected.items() if not write.id]
            key_of.update({record["Id"]: sale_key for sale_key, record in self._existing(missing).items()})
        for sale_key in unexpected:
            batch.plans[sale_key].action = "update"
        current = {sale_key: set(batch.line_keys[sale_key]) for sale_key in unexpected}
        deletes = [Write(DELETE_LINES, line_id, (sale_key,))
                   for sale_key, line_ids in self._stale_lines(key_of, current).items() for line_id in line_ids]
        batch.writes.extend(deletes)
        self.sink.write(deletes)
        return bool(deletes)

    def _note_rollups(self, batch: _Batch) -> None:
        """The accounts whose roll-ups the batch changed: where each written sale is linked now and where it
        was. A dry-run also keeps what it would write, to add to Salesforce's aggregates at the end."""
        touched: set[str] = set()
        for sale_key, customer_key, before, was_there, contribution in batch.rollups:
            plan = batch.plans[sale_key]
            # a parked sale counts too: its transaction may have gone through without its lines
            resolution = self._resolved.get(customer_key) if customer_key else None
            after = resolution.account_id if resolution and plan.match != AMBIGUOUS else None
            if after is None and plan.match == CREATED and self.dry_run:
                after = customer_key  # an account the dry-run would create: known by its key
            elif after is None and before:
                after = before  # a hand link the sync keeps
            for account in (before, after):
                if account and not (self.dry_run and account == customer_key):
                    touched.add(account)
            if self.dry_run and plan.action != "rejected":
                if before and was_there:
                    self._superseded.setdefault(before, []).append(sale_key)
                if after:
                    self._planned.setdefault(after, []).append(contribution)
        if self.dry_run:
            self._touched |= touched
        else:
            self.store.add_pending_rollups(self.account_id, touched)

    def _roll_up(self, summary: RunSummary) -> None:
        """LSPOS_ROLLUPS: the four loyalty fields recomputed by Salesforce's aggregates for the accounts the
        run touched (and those a previous run could not update), written where they moved."""
        if not self.roll_up:
            return
        ids = sorted(self._touched) if self.dry_run else self.store.pending_rollups(self.account_id)
        created = [ref for ref in self._planned if ref not in self._touched]  # dry-run: accounts not there yet
        report: dict[str, Any] = {"accounts": len(ids) + len(created), "updated": 0, "changes": [], "rejected": []}
        summary.rollups = report
        with self.store.rollup_lock() if not self.dry_run else nullcontext():
            writes = self._roll_up_accounts(ids, created, report)
        refused = {w.record["id"]: w.error for w in writes if w.error}
        report["updated"] = 0 if self.dry_run else len(writes) - len(refused)
        report["rejected"] = [{"account_id": i, "reason": reason} for i, reason in refused.items()]
        if not self.dry_run:
            self.store.set_pending_rollups(self.account_id, refused)
        log.info("roll-ups: %d account(s) recomputed, %d updated", report["accounts"], report["updated"],
                 extra={"phase": "rollups", "counts": {"accounts": report["accounts"], "updated": report["updated"],
                                                       "rejected": len(refused)}})

    def _account_writes(self, customer_key: str, customer: Customer, sales: list[Sale],
                        built: dict[int, tuple]) -> list[Write]:
        """The account write a customer's resolution calls for: create it, or stamp the key on it and (with
        LSPOS_ENRICH_PROFILES) fill its empty profile fields; or nothing."""
        resolution = self._resolved[customer_key]
        profile = mapping.profile_fields(customer, self.enrich_profiles)
        sale_keys = tuple(built[sale.sale_id][0][mapping.SALE_KEY] for sale in sales)
        if resolution.create:
            if self.field_map.additions.get(mapping.ACCOUNT):
                raw = self._customer_payload(sales[0])
                profile = {**profile, **self.field_map.added_values(mapping.ACCOUNT, {"customer": raw})}
            record = mapping.person_account_record(customer, self.account_id, self._person_record_type_id(), profile)
            return [Write(CREATE_ACCOUNTS, {k: v for k, v in record.items() if v is not None}, sale_keys, customer_key)]
        known = resolution.account.profile if resolution.account else None
        fill = {f: v for f, v in profile.items() if not known.get(f)} if self.enrich_profiles and known is not None else {}
        if not (resolution.stamp_key or fill):
            return []
        record = {"attributes": {"type": mapping.ACCOUNT}, "id": resolution.account_id, **fill}
        if resolution.stamp_key:
            record[mapping.CUSTOMER_KEY] = customer_key
        return [Write(UPDATE_ACCOUNTS, record, sale_keys, customer_key, tuple(fill))]

    def _settle(self, batch: _Batch, summary: RunSummary) -> None:
        """Per sale: written when every record it depends on went through, else parked with the reasons; then
        the progress the batch carries."""
        errors: dict[str, list[str]] = {}
        for write in batch.writes:
            if write.error:
                for sale_key in write.sale_keys:
                    errors.setdefault(sale_key, []).append(f"{write.kind}: {write.error}")
            if write.customer_key is not None and (resolution := self._resolved.get(write.customer_key)):
                if write.error:
                    del self._resolved[write.customer_key]  # decided afresh by a later batch or run
                    continue
                self._resolved[write.customer_key] = Resolution(
                    resolution.status, resolution.account_id or write.id, resolution.reason)
                if write.filled:
                    summary.enriched.append({"account_id": resolution.account_id, "customer_key": write.customer_key,
                                             "fields": [self.field_map.field(mapping.ACCOUNT, f) for f in write.filled]})
        written, rejected = {}, {}
        for sale_key, sale_id, digest in batch.sales:
            plan = batch.plans[sale_key]
            if sale_key in errors:
                reason = _dedupe(errors[sale_key])
                plan.action, plan.error = "rejected", reason
                rejected[sale_key] = (sale_id, reason)
                summary.rejected.append({"sale_key": sale_key, "sale_id": sale_id, "reason": reason})
            else:
                written[sale_key] = (digest, plan.match)
                summary.written += 1
            if self.dry_run:
                summary.plans.append(plan)
        if not self.dry_run and batch.sales:
            self.store.record_outcomes(self.account_id, written, rejected)
        if self.roll_up:
            self._note_rollups(batch)
        if batch.progress is not None and self._progress is not None:
            summary.progress = batch.progress
            self._progress(batch.progress)

    def _roll_up_accounts(self, ids: list[str], created: list[str], report: dict[str, Any]) -> list[Write]:
        """Reads the aggregates and current values of `ids`, and writes (or, in a dry-run, lists) the changes."""
        groups: dict[str, list[dict]] = {}
        current: dict[str, dict] = {}
        if ids:
            statements = rollups.aggregate_statements(ids, self._superseded if self.dry_run else None)
            answers = self.sink.queries([statement for pair in statements for statement in pair])
            for aggregate, accounts in zip(answers[::2], answers[1::2]):
                for row in aggregate or ():
                    groups.setdefault(row["Account__c"], []).append(row)
                current.update({row["Id"]: row for row in accounts or ()})
        writes = []
        existing = set(ids)
        for ref in ids + created:
            if ref in existing and ref not in current:
                continue  # the account is gone from Salesforce
            new = rollups.values(groups.get(ref, ()), self._planned.get(ref, ()))
            moves = rollups.changed(current.get(ref), new)
            if not moves:
                continue
            if self.dry_run:
                names = self.field_map  # the admin reads the org's names
                report["changes"].append({"account_id": ref if ref in current else None,
                                          "customer_key": None if ref in current else ref,
                                          "fields": {names.field(mapping.ACCOUNT, f): {"from": a, "to": b}
                                                     for f, (a, b) in moves.items()}})
            if ref in current:
                writes.append(Write(UPDATE_ACCOUNTS, {"attributes": {"type": mapping.ACCOUNT}, "id": ref, **new},
                                    (f"rollup:{ref}",)))
        if writes:
            self.sink.write(writes)
            self.sink.flush()
        return writes

    def _plan(self, sale: Sale, transaction: dict, lines: list, match: str, account_id: str | None,
              reason: str, action: str) -> SalePlan:
        added = {a.name: transaction.get(a.name) for a in self.field_map.additions.get(mapping.TRANSACTION, ())}
        return SalePlan(sale.sale_id, transaction[mapping.SALE_KEY], sale.ticket_number, transaction["Status__c"],
                        transaction["Total__c"], len(lines), match, account_id, self.field_map.in_org_names(reason),
                        action, added=added or None)

    # -- Salesforce reads
    def _look_up(self, customers: dict[str, Customer], sale_keys: list[str]) -> tuple[Candidates, dict[str, dict]]:
        """Candidate Person Accounts for the customers, the transactions already there for the sale keys, and
        (once a run) the Person Account record type: one round of `/composite` requests."""
        select = queries.ENRICHED_ACCOUNT_FIELDS if self.enrich_profiles else queries.ACCOUNT_FIELDS
        people = [(key, normalise_email(primary_email(customer)), customer_phones(customer, self.region))
                  for key, customer in customers.items()]
        by_account = queries.person_accounts(people, select, like=self._like)
        by_sale = queries.transactions_by_key(sale_keys)
        record_type = [queries.person_record_type(self.person_record_type)] \
            if customers and self._record_type_id is None else []
        answers = self.sink.queries(by_account + by_sale + record_type,
                                    frozenset(range(len(by_account))) if self._like else frozenset())
        account_answers = answers[:len(by_account)]
        if None in account_answers:
            # A server that refuses LIKE: equality on the usual spellings of each number instead, this time and
            # for the rest of the run.
            self._like = False
            account_answers = self.sink.queries(queries.person_accounts(people, select, like=False))
        if record_type:
            found = answers[-1] or []
            self._record_type_id = found[0]["Id"] if found else ""
        candidates = Candidates()
        for records in account_answers:
            for record in records or ():
                candidates.add(queries.person_account(record, self.region))
        existing = {record[mapping.SALE_KEY]: record
                    for records in answers[len(by_account):len(by_account) + len(by_sale)] for record in records or ()}
        return candidates, existing

    def _existing(self, sale_keys: list[str]) -> dict[str, dict]:
        """The transactions Salesforce has for these sale keys, by sale key."""
        return {record[mapping.SALE_KEY]: record for records in self.sink.queries(queries.transactions_by_key(sale_keys))
                for record in records or ()}

    def _stale_lines(self, key_of: dict[str, str], current: dict[str, set[str]]) -> dict[str, list[str]]:
        """Ids of lines in Salesforce that the sale no longer has in Lightspeed, per sale key, given the sales'
        transactions (Id -> sale key) and the line keys each has now."""
        stale: dict[str, list[str]] = {}
        for records in self.sink.queries(queries.lines_by_transaction(key_of), after_lines=True):
            for record in records or ():
                sale_key = key_of.get(record["Sales_Transaction__c"])
                if sale_key and record[mapping.LINE_KEY] not in current.get(sale_key, set()):
                    stale.setdefault(sale_key, []).append(record["Id"])
        return stale

    def _person_record_type_id(self) -> str:
        if not self._record_type_id:  # read with the batch's lookups
            raise RunFailed(
                f"no Person Account record type '{self.person_record_type}' in Salesforce: enable Person Accounts "
                "or set LSPOS_PERSON_ACCOUNT_RECORD_TYPE to its DeveloperName")
        return self._record_type_id


class _Recent(OrderedDict):
    """A dict that keeps the `size` entries set last; setting an entry makes it the newest."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


# The `attributes` of every transaction and line record (the writer copies them where a mapping renames the object).
_TRANSACTION_TYPE = {"type": mapping.TRANSACTION}
_LINE_TYPE = {"type": mapping.LINE}


def _prefetched(pages: Iterator[list[dict[str, Any]]], depth: int = 4) -> Iterator[list[dict[str, Any]]]:
    """The same pages, in the same order, read ahead by a thread: while Salesforce writes one batch, the
    next Lightspeed pages are already on their way. An error in the reader surfaces here, in order."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def read() -> None:
        try:
            for page in pages:
                queue.put(page)
                if stop.is_set():
                    return
            queue.put(done)
        except BaseException as error:  # handed to the consumer, raised there
            queue.put(error)

    reader = threading.Thread(target=read, name="lightspeed-reader", daemon=True)
    reader.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # let a reader blocked on a full queue finish its put
            try:
                queue.get(timeout=0.1)
            except Empty:
                pass


def _batches(sales: Iterable[Sale], size: int = BATCH_SALES) -> Iterator[list[Sale]]:
    batch: list[Sale] = []
    for sale in sales:
        batch.append(sale)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _dedupe(reasons: list[str]) -> str:
    return "; ".join(dict.fromkeys(reasons))


def summary_dict(summary: RunSummary, *, include_plans: bool) -> dict[str, Any]:
    rejected = list({reject["sale_key"]: reject for reject in summary.rejected}.values())  # each sale once, as last tried
    result: dict[str, Any] = {
        "command": summary.command,
        "account_id": summary.account_id,
        "window": {"from": iso(summary.window.since), "to": iso(summary.window.until)} if summary.window else None,
        "sales": {"read": summary.sales_read, "written": summary.written, "unchanged": summary.unchanged,
                  "rejected": len(rejected), "skipped_open": summary.skipped_open,
                  "retried": summary.retried},
        "records": summary.records,
        "ambiguous": list(summary.ambiguous.values()),
        "gaps": list(summary.gaps.values()),
        "enriched": summary.enriched,
        "rollups": summary.rollups,
        "customers": summary.customers,
        "rejected": rejected,
        # only sync moves the checkpoint; a backfill's progress is its own resume point
        "checkpoint": iso(summary.progress) if summary.progress and summary.command == "sync" else None,
    }
    if include_plans:
        result["plans"] = [plan.as_dict() for plan in summary.plans]
    return result
