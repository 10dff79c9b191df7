"""Batches on their way, settled once Salesforce has answered every write of theirs, in the order they were read:
per sale written or parked (the state store), customers' accounts noted, progress moved; and the stale lines of
sales Salesforce turned out to have, deleted after the fact."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from lspos_sync import mapping
from lspos_sync.fieldmap import FieldMap
from lspos_sync.planning import Plan
from lspos_sync.resolving import Resolver
from lspos_sync.rolling import RollUps
from lspos_sync.state import StateStore
from lspos_sync.summary import RunSummary
from lspos_sync.writing import DELETE_LINES, TRANSACTIONS, Write, Writer


@dataclass
class _OnItsWay:
    plan: Plan
    progress: datetime | None  # once it is settled, every sale changed up to here is written or parked
    followed_up: bool = False


class Settler:
    def __init__(self, account_id: str, store: StateStore, writer: Writer, resolver: Resolver, field_map: FieldMap,
                 *, dry_run: bool, rollups: RollUps | None) -> None:
        self.account_id = account_id
        self.store = store
        self.writer = writer
        self.resolver = resolver
        self.field_map = field_map
        self.dry_run = dry_run
        self.rollups = rollups
        self.progress: Callable[[datetime], None] | None = None  # the run's: checkpoint or resume point
        # What must be settled before any batch: the customer feed's writes, sent before every batch's (engine.py)
        self.before_settling: Callable[[], None] | None = None
        self._in_flight: deque[_OnItsWay] = deque()

    def add(self, plan: Plan, progress: datetime | None) -> None:
        """A batch whose writes the writer has: settled once every one is answered."""
        # Most are answered by now; of those the batch keeps only what its settling reads.
        plan.writes = [write for write in plan.writes if not write.answered or write.error or write.customer_key
                       or (write.kind == TRANSACTIONS and write.created is not True)]
        self._in_flight.append(_OnItsWay(plan, progress))

    def park(self, sale_id: int, reason: str, summary: RunSummary) -> None:
        """A sale that is not written (Lightspeed sent it malformed): parked, to be read again by later runs."""
        sale_key = mapping.key(self.account_id, sale_id)
        summary.parked(sale_key, sale_id, reason)
        if not self.dry_run:
            self.store.record_outcomes(self.account_id, {}, {sale_key: (sale_id, reason)})

    def settle_answered(self, summary: RunSummary) -> None:
        """Settles the batches whose writes are all answered, oldest first: progress never passes a batch
        that is not settled."""
        while self._in_flight and all(write.answered for write in self._in_flight[0].plan.writes):
            if self.before_settling is not None:
                self.before_settling()
            batch = self._in_flight[0]
            if not batch.followed_up:
                batch.followed_up = True
                if self._delete_unexpected_lines(batch.plan):
                    continue  # settled once the deletes are answered too
            self._in_flight.popleft()
            self._settle(batch, summary)

    def drain(self, summary: RunSummary) -> None:
        """Sends what the writer still holds and settles every batch."""
        while self._in_flight:
            self.writer.flush()
            self.settle_answered(summary)

    def _delete_unexpected_lines(self, plan: Plan) -> bool:
        """Sales Salesforce already had though nothing said so before writing (a lost state file, a sale
        parked after its transaction went in, another state store): their lines that Lightspeed no longer has
        are deleted now. Whether there were any."""
        unexpected = {write.sale_keys[0]: write for write in plan.writes
                      if write.kind == TRANSACTIONS and not write.error and write.created is not True
                      and write.sale_keys[0] not in plan.checked}
        # A sale written again by a later batch is that batch's to check: its lines may be in Salesforce by now.
        rewritten = {sale_key for later in self._in_flight if later.plan is not plan for sale_key in later.plan.plans}
        unexpected = {sale_key: write for sale_key, write in unexpected.items() if sale_key not in rewritten}
        if not unexpected:
            return False
        key_of = {write.id: sale_key for sale_key, write in unexpected.items() if write.id}
        if len(key_of) < len(unexpected):  # an upsert answered without its Id: read it
            missing = [sale_key for sale_key, write in unexpected.items() if not write.id]
            key_of.update({record["Id"]: sale_key for sale_key, record in self.resolver.existing(missing).items()})
        for sale_key in unexpected:
            plan.plans[sale_key].action = "update"
        current = {sale_key: plan.line_keys[sale_key] for sale_key in unexpected}
        deletes = [Write(DELETE_LINES, line_id, (sale_key,))
                   for sale_key, line_ids in self.resolver.stale_lines(key_of, current).items() for line_id in line_ids]
        plan.writes.extend(deletes)
        self.writer.write(deletes)
        return bool(deletes)

    def _settle(self, batch: _OnItsWay, summary: RunSummary) -> None:
        """Per sale: written when every record it depends on went through, else parked with the reasons; then
        the progress the batch carries."""
        plan = batch.plan
        errors: dict[str, list[str]] = {}
        for write in plan.writes:
            if write.error:
                for sale_key in write.sale_keys:
                    errors.setdefault(sale_key, []).append(f"{write.kind}: {write.error}")
            if write.customer_key is not None and (resolution := self.resolver.account_answered(write)):
                if write.filled:
                    summary.enriched.append({"account_id": resolution.account_id, "customer_key": write.customer_key,
                                             "fields": [self.field_map.field(mapping.ACCOUNT, f) for f in write.filled]})
        written, rejected = {}, {}
        for sale_key, sale_id, digest in plan.sales:
            sale_plan = plan.plans[sale_key]
            if sale_key in errors:
                reason = _dedupe(errors[sale_key])
                sale_plan.action, sale_plan.error = "rejected", reason
                rejected[sale_key] = (sale_id, reason)
                summary.parked(sale_key, sale_id, reason)
            else:
                written[sale_key] = (digest, sale_plan.match)
                summary.wrote(sale_key)
            if self.dry_run:
                summary.plans.append(sale_plan)
        if self.rollups:  # before the outcomes: a sale recorded as written is not written (nor noted) again
            self.rollups.note(plan)
        if not self.dry_run and plan.sales:
            self.store.record_outcomes(self.account_id, written, rejected)
        if batch.progress is not None and self.progress is not None:
            summary.progress = batch.progress
            self.progress(batch.progress)


def _dedupe(reasons: list[str]) -> str:
    return "; ".join(dict.fromkeys(reasons))
