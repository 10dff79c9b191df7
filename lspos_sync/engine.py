"""The run: window -> Lightspeed pages -> resolve customers -> plan -> write -> settle -> checkpoint.

Every command is a way of calling `Engine.run`: `sync` with the live checkpoint, `backfill` with an
explicit window that never touches it, `dry-run` with a writer that records instead of writing. Each step is a
unit of its own (docs/architecture.md); this module only runs them in order.
"""

from __future__ import annotations

import logging
import time
from contextlib import closing
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterator

from lspos_sync import mapping
from lspos_sync.customer_feed import CustomerFeed
from lspos_sync.fieldmap import DEFAULT, FieldMap
from lspos_sync.lightspeed.client import LightspeedClient
from lspos_sync.planning import Plan, Planner
from lspos_sync.reading import Reader, batches
from lspos_sync.resolving import Foreseen, Resolver
from lspos_sync.rolling import RollUps
from lspos_sync.settling import Settler
from lspos_sync.state import SALE, StateStore
from lspos_sync.summary import RunSummary, Window, summary_dict
from lspos_sync.writing import Writer

if TYPE_CHECKING:
    from lspos_sync.lightspeed.models import Sale

# RunSummary, Window and summary_dict are imported from here by the commands.
__all__ = ["BATCH_SALES", "RESOLVED_KEPT", "Engine", "RunSummary", "Window", "summary_dict"]

log = logging.getLogger(__name__)

# Sales resolved and written together: their lookups, then about 4,400 records (3 lines a sale on average,
# plus accounts to create or stamp) in 22 or so collections, which the writer packs five to a /composite
# request, filling the last one with the next batch's lookups.
BATCH_SALES = 1000
# Customer decisions kept for later batches (never fewer than three batches' worth): a customer forgotten is
# looked up again, by the key the run stamped, at the cost of a few characters in a statement. More kept made a
# 100,000-sale backfill hold 2 MB more than a 10,000-sale one (docs/performance.md).
RESOLVED_KEPT = 3_000


class Engine:
    def __init__(self, account_id: str, store: StateStore, lightspeed: LightspeedClient, writer: Writer, *,
                 dry_run: bool, phone_region: str, person_record_type: str, verify_unchanged: bool = False,
                 enrich_profiles: bool = False, field_map: FieldMap = DEFAULT, roll_up: bool = False,
                 on_batch: Callable[[int, RunSummary], None] | None = None, sync_customers: bool = False,
                 foreseen: Foreseen | None = None) -> None:
        self.account_id = account_id
        self.store = store
        self.writer = writer
        # A sync (and its preview) leaves alone the sales `rejects drop` gave up on, read again unchanged since;
        # a backfill, which checks what it covers, writes them again.
        self.leave_dropped = not verify_unchanged
        self.on_batch = on_batch
        enriched = field_map.enrichable() if enrich_profiles else ()
        # (never fewer than three batches' worth of decisions: the batch written and the one on its way use theirs)
        self.resolver = Resolver(account_id, writer, phone_region=phone_region, person_record_type=person_record_type,
                                 enriched=enriched, check_all=dry_run or roll_up,
                                 kept=max(RESOLVED_KEPT, 3 * BATCH_SALES),
                                 match_status=field_map.is_on(mapping.TRANSACTION, "Match_Status__c"),
                                 foreseen=foreseen, field_map=field_map)
        self.rollups = RollUps(account_id, store, writer, self.resolver, field_map, dry_run=dry_run) \
            if roll_up else None
        self.settler = Settler(account_id, store, writer, self.resolver, field_map, dry_run=dry_run,
                               rollups=self.rollups)
        self.reader = Reader(lightspeed, field_map, park=self.settler.park,
                             written=lambda sale_id: bool(store.written([mapping.key(account_id, sale_id)])))
        self.planner = Planner(account_id, store, self.reader, self.resolver, field_map, dry_run=dry_run,
                               verify_unchanged=verify_unchanged, enrich_profiles=enrich_profiles, roll_up=roll_up)
        # The field a line's upsert is refused on when the line is still under another sale's transaction.
        self.line_parent = field_map.field(mapping.LINE, "Sales_Transaction__c")
        self.customer_feed = CustomerFeed(  # LSPOS_SYNC_CUSTOMERS: clients without a sale, before the sales
            account_id, store, lightspeed, writer, dry_run=dry_run, region=phone_region, enrich_profiles=enrich_profiles,
            look_up=lambda customers: self.resolver.look_up(customers, [])[0],
            record_type_id=self.resolver.person_record_type_id, field_map=field_map,
            leave_dropped=self.leave_dropped) if sync_customers else None

    def run(self, command: str, window: Window, *, progress: Callable[[datetime], None] | None = None,
            limit: int | None = None, retry_rejects: bool = True) -> RunSummary:
        """Runs the window. `progress(t)` is called whenever every sale changed up to `t` is written or
        parked, last with the window's end: `sync` moves its checkpoint there, `backfill` its resume point."""
        summary = RunSummary(command, self.account_id, window)
        self.settler.progress = progress
        # A batch's worth of sales read ahead, from now on: the first pages come in while the run reads the
        # voids (a no-op sync waits for one Lightspeed answer fewer), and the next batch while one is written.
        with closing(self.reader.window_pages(window, ahead=min(BATCH_SALES, limit or BATCH_SALES))) as pages:
            if self.customer_feed is not None:
                # its last writes travel with the next look-ups; settled before any batch of sales is
                self.customer_feed.start(window.since, window.until, limit)
                self.settler.before_settling = self.customer_feed.settle
            read_first = self._retry_parked([r.sale_id for r in self.store.rejects(self.account_id)], summary) \
                if retry_rejects else set()
            if limit is None:
                # Voids first: a void that moves no timestamp of its sale is seen only here, and the checkpoint
                # moves with the pages below, so a run that stops half-way must not have skipped this.
                voided = [sale_id for sale_id in self.reader.voided(window) if sale_id not in read_first]
                read_first |= self._process_ids(voided, summary)
            # Parked sales and voids are written and settled before the pages, which skip them: each sale once a
            # run. Read again, a dry-run (no hash kept) would plan it twice, a backfill check it in Salesforce
            # twice, and a parked sale voided since be written twice.
            self.settler.drain(summary)
            self._read_window(pages, window, summary, progress, limit, read_first)
        self.settler.drain(summary)
        if self.customer_feed is not None:
            summary.customers = self.customer_feed.finish()
        self._rewrite_moved_lines(summary)
        if self.rollups:
            self.rollups.run(summary)
        if progress and limit is None:
            summary.progress = window.until
            progress(window.until)
        log.info("%s read %d sale(s) from Lightspeed", command, summary.sales_read,
                 extra={"phase": "read", "counts": {"sales": summary.sales_read, "unchanged": summary.unchanged,
                                                    "rejected": len(summary.rejected)}})
        summary.records = dict(self.writer.stats.records)
        return summary

    def _read_window(self, pages: Iterator[list], window: Window, summary: RunSummary,
                     progress: Callable[[datetime], None] | None, limit: int | None, read_first: set[int]) -> None:
        done, latest, in_order = 0, None, True
        sales = self.reader.sales(pages, summary, window, skip=read_first)
        dropped = self.store.dropped(SALE, self.account_id) if self.leave_dropped else {}
        if dropped:
            sales = (sale for sale in sales if not self._left_dropped(sale, dropped))
        for batch in batches(sales, min(BATCH_SALES, limit or BATCH_SALES)):
            batch = batch[:limit - done] if limit is not None else batch
            if batch:
                for sale in batch:
                    moment = self.reader.place(sale)
                    if moment is not None:
                        in_order = in_order and (latest is None or moment >= latest)
                        latest = max(latest, moment) if latest else moment
                # Pages come oldest change first, so once this batch is settled every sale changed up to
                # here is written or parked; the look-back re-reads the boundary. Out of order, or read newest
                # first (where Lightspeed refuses the filter), only the end counts.
                in_order = in_order and self.reader.oldest_first
                moment = min(latest, window.until) if progress and in_order and latest is not None else None
                self._process(batch, summary, moment)
                done += len(batch)
            if limit is not None and done >= limit:
                break

    def _left_dropped(self, sale: Sale, dropped: dict[str, datetime]) -> bool:
        """Whether a sale read in the window is one `rejects drop` gave up on, unchanged since: the look-back
        would otherwise park it again. Changed after the drop, it is written like any other. (The SaleVoid feed's
        sales are not left alone: a dropped sale may be in Salesforce in part, and its void must reach it.)"""
        at = dropped.get(mapping.key(self.account_id, sale.sale_id))
        moment = self.reader.place(sale) if at is not None else None
        if moment is None or moment > at:
            return False
        log.info("left alone sale %s, dropped from the rejects (`rejects drop`) and unchanged since",
                 mapping.key(self.account_id, sale.sale_id))
        return True

    def _rewrite_moved_lines(self, summary: RunSummary) -> None:
        """Sales refused because a line of theirs was still under another sale's transaction: a line moved, its
        old sale written in a later batch (docs/sync-rules.md, "A line moved to another sale"). That sale's stale
        lines are deleted by now, so they are written again, once; costs nothing when no sale was refused so."""
        refused = [parked["sale_id"] for parked in summary.rejected.values()
                   if "INVALID_FIELD_FOR_INSERT_UPDATE" in parked["reason"] and self.line_parent in parked["reason"]]
        if not refused:
            return
        log.info("writing again %d sale(s) with a line that was under another sale", len(refused))
        read = summary.sales_read
        self._process_ids(refused, summary)
        summary.sales_read = read  # read twice, counted once
        self.settler.drain(summary)

    def retry(self, sale_ids: list[int]) -> RunSummary:
        """`rejects retry`: only the given parked sales, read afresh from Lightspeed and written again."""
        summary = RunSummary("rejects retry", self.account_id, None)
        self._retry_parked(sale_ids, summary)
        self.settler.drain(summary)
        if self.rollups:
            self.rollups.run(summary)
        summary.records = dict(self.writer.stats.records)
        return summary

    def _retry_parked(self, sale_ids: list[int], summary: RunSummary) -> set[int]:
        if not sale_ids:
            return set()
        log.info("retrying %d rejected sale(s) first", len(sale_ids))
        summary.retried = len(sale_ids)
        return self._process_ids(sale_ids, summary)

    def _process_ids(self, sale_ids: list[int], summary: RunSummary) -> set[int]:
        """Given sales, read afresh from Lightspeed whatever their time, and written like any other; the ids of
        those read."""
        read: set[int] = set()
        for batch in batches(self.reader.sales(self.reader.pages_by_id(sale_ids), summary, None), BATCH_SALES):
            read.update(sale.sale_id for sale in batch)
            self._process(batch, summary)
        return read

    def _process(self, sales: list[Sale], summary: RunSummary, progress: datetime | None = None) -> None:
        """One batch: read what it lacks, plan, hand the plan to the writer, settle what is answered."""
        self.reader.load_reference()
        # the latest state of each sale, once, with what its payload lacked
        sales = list({sale.sale_id: sale for sale in sales}.values())
        sales = self.reader.with_items(self.reader.with_customers(sales))
        built = self.planner.build(sales)
        todo, known = self.planner.changed(sales, built, summary)
        plan = Plan()
        if todo:
            started = time.monotonic()
            plan = self.planner.plan(todo, built, self.resolver.resolve(todo, built, known), summary)
            if self.rollups:
                self.rollups.note_before(plan)
            self.writer.write(plan.writes)
            log.info("batch of %d sale(s): %d to write, %d unchanged", len(sales), len(todo), len(sales) - len(todo),
                     extra={"phase": "batch", "counts": {"sales": len(sales), "written": len(todo)},
                            "duration_ms": round((time.monotonic() - started) * 1000)})
        self.settler.add(plan, progress)
        self.reader.forget(sales)
        self.settler.settle_answered(summary)
        if self.on_batch:
            self.on_batch(len(sales), summary)
