"""LSPOS_ROLLUPS for a run: the accounts whose transactions each settled batch changed, noted as it goes, then
their four loyalty fields recomputed by Salesforce's aggregates and written where they moved (`rollups.py` has
the statements and the values)."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from lspos_sync import mapping, rollups
from lspos_sync.customers import AMBIGUOUS, CREATED
from lspos_sync.fieldmap import FieldMap
from lspos_sync.planning import Plan
from lspos_sync.resolving import Resolver
from lspos_sync.state import StateStore
from lspos_sync.summary import RunSummary
from lspos_sync.writing import UPDATE_ACCOUNTS, Write, Writer

log = logging.getLogger(__name__)


class RollUps:
    def __init__(self, account_id: str, store: StateStore, writer: Writer, resolver: Resolver, field_map: FieldMap,
                 *, dry_run: bool) -> None:
        self.account_id = account_id
        self.store = store
        self.writer = writer
        self.resolver = resolver
        self.field_map = field_map
        self.dry_run = dry_run
        # the fields kept: a roll-up field the mapping switches off is neither read nor written (the org may lack it)
        self.fields = tuple(f for f in rollups.FIELDS if field_map.is_on(mapping.ACCOUNT, f))
        # A real run keeps the accounts whose transactions changed in the state store, batch by batch, so that
        # a run that stops before its roll-ups leaves them to the next one. A dry-run keeps them here, with what
        # it would write (by account Id, or customer key for accounts it would create) and the sale keys to
        # leave out of Salesforce's aggregates.
        self._touched: set[str] = set()
        self._planned: dict[str, list[rollups.Contribution]] = {}
        self._superseded: dict[str, list[str]] = {}

    def note_before(self, plan: Plan) -> None:
        """Before a batch's writes go: the accounts its sales are linked to in Salesforce now. Once Salesforce has
        taken a write that moves a sale to another account, no later run can read where it was: a run that dies
        before settling the batch (kill, a lost response, an outage) must have kept them already."""
        before = {entry[2] for entry in plan.rollups if entry[2]}
        if before and not self.dry_run:
            self.store.add_pending_rollups(self.account_id, before)

    def note(self, plan: Plan) -> None:
        """The accounts whose roll-ups a settled batch changed: where each written sale is linked now and where
        it was. A dry-run also keeps what it would write, to add to Salesforce's aggregates at the end."""
        touched: set[str] = set()
        for sale_key, customer_key, before, kept, was_there, contribution in plan.rollups:
            sale_plan = plan.plans[sale_key]
            # a parked sale counts too: its transaction may have gone through without its lines
            resolution = self.resolver.decisions.get(customer_key) if customer_key else None
            after = resolution.account_id if resolution and sale_plan.match != AMBIGUOUS else None
            to_create = None  # dry-run: an account the run would create, known by its customer key
            if after is None and self.dry_run and sale_plan.match != AMBIGUOUS:
                # the customer's own, or another's it matched (resolution.account_key)
                account_key = resolution.account_key if resolution else None
                to_create = account_key or (customer_key if sale_plan.match == CREATED else None)
            if to_create:
                after = to_create
            elif kept:
                after = before  # a link made by hand, which the sync keeps
            for account in (before, after):
                if account and account != to_create:
                    touched.add(account)
            if self.dry_run and sale_plan.action != "rejected":
                if before and was_there:
                    self._superseded.setdefault(before, []).append(sale_key)
                if after:
                    self._planned.setdefault(after, []).append(contribution)
        if self.dry_run:
            self._touched |= touched
        else:
            self.store.add_pending_rollups(self.account_id, touched)

    def run(self, summary: RunSummary) -> None:
        """The four loyalty fields recomputed by Salesforce's aggregates for the accounts the run touched (and
        those a previous run could not update), written where they moved."""
        ids = sorted(self._touched) if self.dry_run else self.store.pending_rollups(self.account_id)
        created = [ref for ref in self._planned if ref not in self._touched]  # dry-run: accounts not there yet
        report: dict[str, Any] = {"accounts": len(ids) + len(created), "updated": 0, "changes": [], "rejected": []}
        summary.rollups = report
        with self.store.rollup_lock() if not self.dry_run else nullcontext():
            writes = self._write(ids, created, report)
        refused = {w.record["id"]: w.error for w in writes if w.error}
        report["updated"] = 0 if self.dry_run else len(writes) - len(refused)
        report["rejected"] = [{"account_id": i, "reason": reason} for i, reason in refused.items()]
        if not self.dry_run:
            self.store.set_pending_rollups(self.account_id, refused)
        log.info("roll-ups: %d account(s) recomputed, %d updated", report["accounts"], report["updated"],
                 extra={"phase": "rollups", "counts": {"accounts": report["accounts"], "updated": report["updated"],
                                                       "rejected": len(refused)}})

    def _write(self, ids: list[str], created: list[str], report: dict[str, Any]) -> list[Write]:
        """Reads the aggregates and current values of `ids`, and writes (or, in a dry-run, lists) the changes."""
        groups: dict[str, list[dict]] = {}
        current: dict[str, dict] = {}
        if ids and self.fields:
            excluded = self._superseded if self.dry_run else None
            answers = self.resolver.budget.ask(lambda limit: self.writer.queries(
                [statement for pair in rollups.aggregate_statements(ids, excluded, limit, self.fields)
                 for statement in pair]))
            for aggregate, accounts in zip(answers[::2], answers[1::2]):
                for row in aggregate or ():
                    groups.setdefault(row["Account__c"], []).append(row)
                current.update({row["Id"]: row for row in accounts or ()})
        writes = []
        existing = set(ids)
        for ref in ids + created:
            if ref in existing and ref not in current:
                continue  # the account is gone from Salesforce
            computed = rollups.values(groups.get(ref, ()), self._planned.get(ref, ()))
            new = {name: computed[name] for name in self.fields}
            moves = rollups.changed(current.get(ref), new)
            if not moves:
                continue
            if self.dry_run:
                names = self.field_map  # the admin reads the org's names
                report["changes"].append({"account_id": ref if ref in current else None,
                                          "customer_key": None if ref in current else ref,
                                          "fields": {names.field(mapping.ACCOUNT, f): {"from": a, "to": b}
                                                     for f, (a, b) in moves.items()}})
            if ref in current or self.dry_run:  # (a dry-run counts the write to an account it would create too)
                writes.append(Write(UPDATE_ACCOUNTS, {"attributes": {"type": mapping.ACCOUNT}, "id": ref, **new},
                                    (f"rollup:{ref}",)))
        if writes:
            self.writer.write(writes)
            self.writer.flush()
        return writes
