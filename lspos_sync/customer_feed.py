"""Clients without a sale (LSPOS_SYNC_CUSTOMERS, contract §5): the Lightspeed customers created or changed in a
run's window, each brought to a Person Account by the matching rules of §4 before the run's sales are read.

The feed reaches the engine through two functions and nothing else (see `CustomerFeed`): `look_up`, the engine's
candidate Person Accounts for some customers (by key, email or phone, one round of `/composite` requests), and
`record_type_id`, the Person Account record type that look-up read. It writes through the run's writer and keeps
what it settled in the state store, so that a customer read again unchanged costs no Salesforce call.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from lspos_sync import mapping
from lspos_sync.customers import AMBIGUOUS, Candidates, Resolution, resolve_in_turn
from lspos_sync.fieldmap import DEFAULT, FieldMap
from lspos_sync.lightspeed.client import LightspeedClient
from lspos_sync.planning import account_write
from lspos_sync.reading import batches
from lspos_sync.resolving import new_account
from lspos_sync.writing import CREATE_ACCOUNTS, Write, Writer
from lspos_sync.state import CUSTOMER, StateStore

if TYPE_CHECKING:
    from lspos_sync.lightspeed.models import Customer

log = logging.getLogger(__name__)

# Customers resolved and written together: one look-up statement or a few, and at most 1,000 account writes.
CUSTOMER_BATCH = 1000

# What happened (or, in a dry-run, would happen) to a customer.
CREATE, STAMP, FILL, NOTHING, AMBIGUOUS_ACTION, ARCHIVED, UNCHANGED, REJECTED = (
    "create", "stamp", "fill", "nothing", "ambiguous", "archived", "unchanged", "rejected")
ACTIONS = (CREATE, STAMP, FILL, NOTHING, AMBIGUOUS_ACTION, ARCHIVED, UNCHANGED, REJECTED)


@dataclass(slots=True)
class CustomerPlan:
    """The decision for one customer read by the feed: the line an admin reads in a dry-run."""

    customer_id: int
    customer_key: str
    name: str
    action: str  # one of ACTIONS
    match: str | None  # Linked, Email, Phone, Created, Ambiguous; None when archived or unchanged
    account_id: str | None
    reason: str
    filled: list[str] = field(default_factory=list)  # LSPOS_ENRICH_PROFILES: the empty fields filled, by org name
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass
class _Batch:
    """A batch written: its decisions, its account writes, and the fingerprints of the customers it decided."""

    plans: dict[str, CustomerPlan]
    writes: list[Write]
    digests: dict[str, str]  # customer key -> fingerprint, of the customers looked up (not unchanged, not archived)
    archived: list[str]  # customer keys


@dataclass
class CustomerReport:
    """What the feed did in one run: counts by action, and the customers that need someone's attention."""

    read: int = 0
    retried: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    ambiguous: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    enriched: list[dict[str, Any]] = field(default_factory=list)
    plans: list[CustomerPlan] = field(default_factory=list)  # dry-run only: a real run keeps no per-customer list

    def as_dict(self, include_plans: bool) -> dict[str, Any]:
        result: dict[str, Any] = {"read": self.read, "retried": self.retried, **self.counts,
                                  "ambiguous_customers": self.ambiguous, "rejected_customers": self.rejected,
                                  "enriched": self.enriched}
        if include_plans:
            result["plans"] = [plan.as_dict() for plan in self.plans]
        return result


class CustomerFeed:
    """Reads the customers of a window and settles each before the run's sales.

    Its interface with the engine, which builds it and calls `run` first thing in a run:

    * `look_up(customers)`: the candidate Person Accounts for customers (customer key -> Customer), as the
      engine looks them up for its sales (`Resolver.look_up(customers, [])[0]`), reading the Person Account
      record type on the way;
    * `record_type_id()`: that record type's Id (`Resolver.person_record_type_id`), which fails the run with an
      actionable message when the org has none;
    * `finish()` returns the run summary's `customers`; its `rejected_customers` make the exit code 3.

    Every account write goes through the run's writer. `start` leaves its last ones queued there, to fill the request
    of the look-ups that come next (the sales', which must travel behind them anyway); a batch's outcomes are
    recorded once its writes are answered. The engine calls `settle` before it settles any batch of sales (whose
    writes, sent after the feed's, are answered after them; a batch with no write sends what the feed left), so the
    checkpoint, which only the sales move, never passes a customer that was neither accepted nor parked. `finish`
    settles what is left and returns the report.
    """

    def __init__(self, account_id: str, store: StateStore, lightspeed: LightspeedClient, writer: Writer, *,
                 dry_run: bool, region: str, enrich_profiles: bool,
                 look_up: Callable[[dict[str, Customer]], Candidates], record_type_id: Callable[[], str],
                 field_map: FieldMap = DEFAULT, leave_dropped: bool = False) -> None:
        self.account_id = account_id
        self.store = store
        self.lightspeed = lightspeed
        self.writer = writer
        self.dry_run = dry_run
        self.region = region
        self.enrich_profiles = enrich_profiles
        self.field_map = field_map
        self._look_up = look_up
        self._record_type_id = record_type_id
        # Fingerprints change when what is written for an unchanged customer would: another mapping, enrichment.
        self._salt = f"customer:{field_map.fingerprint}:{'enrich' if enrich_profiles else 'plain'}"
        # payloads as sent, kept for the batch at hand only when the mapping adds fields
        self._raw: dict[int, dict[str, Any]] = {}
        self._report = CustomerReport()
        self._pending: deque[_Batch] = deque()  # batches written, not settled yet: at most two
        # A sync leaves alone the customers `rejects drop` gave up on, read again unchanged since (Engine).
        self._leave_dropped = leave_dropped
        self._dropped: dict[str, datetime] = {}

    def run(self, since: datetime, until: datetime, limit: int | None = None) -> dict[str, Any]:
        """`start` and `finish` at once, for a run whose sales send nothing through this writer (the bulk path)."""
        self.start(since, until, limit)
        return self.finish()

    def start(self, since: datetime, until: datetime, limit: int | None = None) -> None:
        """The parked customers first, then every customer created or changed in [since, until], each once: read,
        resolved and written; the last writes possibly still queued in the writer (`finish`)."""
        report = self._report = CustomerReport()
        self._dropped = self.store.dropped(CUSTOMER, self.account_id) if self._leave_dropped else {}
        seen: set[int] = set()
        raw = self._raw if self.field_map.additions.get(mapping.ACCOUNT) else None
        parked = self.store.customer_rejects(self.account_id)
        if parked:
            log.info("retrying %d rejected customer(s) first", len(parked))
            report.retried = len(parked)
            found = self.lightspeed.customers_by_id([p.customer_id for p in parked], raw)
            gone = [p.customer_key for p in parked if p.customer_id not in found]
            if gone and not self.dry_run:
                log.warning("parked customer(s) no longer in Lightspeed, forgotten: %s", ", ".join(gone))
                self.store.forget_customer_rejects(gone)
            self._read(list(found.values()), seen, limit)
        pages = self.lightspeed.customers_changed(since, until, raw)
        self._read((customer for page in pages for customer in page), seen, limit)

    def settle(self) -> None:
        """Records the outcomes of every batch written, once its writes are answered: when one is not yet (nothing
        sent since), what the writer holds is sent first."""
        if any(not write.answered for batch in self._pending for write in batch.writes):
            self.writer.flush()
        self._settle_answered()

    def finish(self) -> dict[str, Any]:
        """Settles what is left of the feed (`settle`) and returns the report."""
        self.settle()
        report = self._report
        log.info("customers: %d read, %s", report.read,
                 ", ".join(f"{count} {action}" for action, count in report.counts.items() if count) or "none to do",
                 extra={"phase": "customers", "counts": {"read": report.read, **report.counts}})
        return report.as_dict(include_plans=self.dry_run)

    def _read(self, customers: Iterable[Customer], seen: set[int], limit: int | None) -> None:
        for batch in _batches(customers, seen, limit, self._report):
            self._pending.append(self._write_batch(batch))
            # the batch before is answered once this one's look-up went, which travelled behind its writes
            self._settle_answered()
            if len(self._pending) > 1:  # this batch looked nothing up: the one before is not sent yet
                self.settle()
            for customer in batch:  # (not all: the page read last may hold the next batch's first customers)
                self._raw.pop(customer.customer_id, None)

    def _settle_answered(self) -> None:
        while self._pending and all(write.answered for write in self._pending[0].writes):
            self._settle(self._pending.popleft())

    # -- one batch
    def _write_batch(self, customers: list[Customer]) -> _Batch:
        """The batch's decisions, and its account writes handed to the writer."""
        keyed = {mapping.key(self.account_id, c.customer_id): c for c in customers}
        plans: dict[str, CustomerPlan] = {}
        archived = [key for key, customer in keyed.items() if customer.archived]
        for key in archived:
            plans[key] = self._plan(keyed.pop(key), key, ARCHIVED, None, None, "archived in Lightspeed: ignored")
        for key in [key for key, customer in keyed.items() if self._left_dropped(key, customer)]:
            plans[key] = self._plan(keyed.pop(key), key, UNCHANGED, None, None,
                                    "dropped from the rejects (`rejects drop`) and unchanged since: left alone")
        digests = {key: self._digest(customer) for key, customer in keyed.items()}
        known = self.store.settled_customers(list(keyed))
        todo = {}
        for key, customer in keyed.items():
            if key in known and known[key][0] == digests[key]:
                plans[key] = self._plan(customer, key, UNCHANGED, known[key][1], None, "unchanged since it was settled")
            else:
                todo[key] = customer
        writes: list[Write] = []
        if todo:
            candidates = self._look_up(todo)
            resolutions = resolve_in_turn(todo, candidates, self.region,
                                          lambda key, customer: new_account(key, customer, self.region, self.field_map))
            for key, resolution in resolutions.items():
                write = self._account_write(key, todo[key], resolution)
                plans[key] = self._plan(todo[key], key, _action(resolution, write), resolution.status,
                                        resolution.account_id, self.field_map.in_org_names(resolution.reason))
                if resolution.status == AMBIGUOUS:
                    self._report.ambiguous.append({"customer_key": key, "customer_id": todo[key].customer_id,
                                             "reason": plans[key].reason, "candidates": list(resolution.candidates)})
                if write is not None:
                    plans[key].filled = [self.field_map.field(mapping.ACCOUNT, f) for f in write.filled]
                    writes.append(write)
            if writes:
                self.writer.write(writes)
        return _Batch(plans, writes, {key: digests[key] for key in todo}, archived)

    def _settle(self, batch: _Batch) -> None:
        """A batch whose writes are answered: its outcomes recorded, and counted in the report."""
        plans, writes, report = batch.plans, batch.writes, self._report
        if batch.archived and not self.dry_run:
            self.store.forget_customer_rejects(batch.archived)
        settled, refused = {}, {}
        for write in writes:
            plan = plans[write.customer_key]  # type: ignore[index]
            if write.error:
                plan.action, plan.error = REJECTED, write.error
                refused[plan.customer_key] = (plan.customer_id, write.error)
                report.rejected.append({"customer_key": plan.customer_key, "customer_id": plan.customer_id,
                                        "reason": write.error})
            elif plan.action == CREATE and write.id:
                plan.account_id = write.id
            if plan.filled and not write.error:
                report.enriched.append({"account_id": plan.account_id, "customer_key": plan.customer_key,
                                        "fields": plan.filled})
        for key, digest in batch.digests.items():
            if key not in refused:
                settled[key] = (digest, plans[key].match or "")
        if not self.dry_run and (settled or refused):
            self.store.record_customer_outcomes(self.account_id, settled, refused)
        for plan in plans.values():
            report.counts[plan.action] += 1
            if self.dry_run:
                report.plans.append(plan)

    def _account_write(self, key: str, customer: Customer, resolution: Resolution) -> Write | None:
        """As for a sale's customer (`planning.account_write`), retried under the customer's own key."""
        added = None
        if resolution.create and self.field_map.additions.get(mapping.ACCOUNT):
            added = self.field_map.added_values(mapping.ACCOUNT, {"customer": self._raw.get(customer.customer_id)})
        return account_write(key, customer, resolution, (f"customer:{key}",),  # never a sale's key
                             account_id=self.account_id, record_type_id=self._record_type_id,
                             enrich_profiles=self.enrich_profiles, field_map=self.field_map, added=added)

    def _left_dropped(self, key: str, customer: Customer) -> bool:
        """Whether `rejects drop` gave up on the customer and it has not changed since: the look-back would
        otherwise park it again."""
        at = self._dropped.get(key)
        moment = customer.last_change if at is not None else None
        return moment is not None and moment <= at

    def _digest(self, customer: Customer) -> str:
        """A fingerprint of what the customer would write: equal, the customer is settled as it is."""
        record = mapping.person_account_record(customer, self.account_id, None,
                                               mapping.profile_fields(customer, self.enrich_profiles))
        if self.field_map.additions.get(mapping.ACCOUNT):
            raw = self._raw.get(customer.customer_id)
            record.update(self.field_map.added_values(mapping.ACCOUNT, {"customer": raw}))
        return mapping.content_hash(record, [], self._salt)

    @staticmethod
    def _plan(customer: Customer, key: str, action: str, match: str | None, account_id: str | None,
              reason: str) -> CustomerPlan:
        name = " ".join(part.strip() for part in (customer.first_name, customer.last_name) if part.strip())
        return CustomerPlan(customer.customer_id, key, name, action, match, account_id, reason)


def _action(resolution: Resolution, write: Write | None) -> str:
    if resolution.status == AMBIGUOUS:
        return AMBIGUOUS_ACTION
    if write is None:
        return NOTHING
    if write.kind == CREATE_ACCOUNTS:
        return CREATE
    return STAMP if resolution.stamp_key else FILL


def _batches(customers: Iterable[Customer], seen: set[int], limit: int | None,
             report: CustomerReport) -> Iterator[list[Customer]]:
    """Customers not met yet this run (both searches may find one), in batches; at most `limit` in all."""
    return batches(_unseen(customers, seen, limit, report), CUSTOMER_BATCH)


def _unseen(customers: Iterable[Customer], seen: set[int], limit: int | None,
            report: CustomerReport) -> Iterator[Customer]:
    for customer in customers:
        if customer.customer_id in seen:
            continue
        if limit is not None and len(seen) >= limit:
            break
        seen.add(customer.customer_id)
        report.read += 1
        yield customer


# How the summary line counts each action: (done, previewed).
_LABELS = {CREATE: ("created", "to create"), STAMP: ("keyed", "to key"), FILL: ("filled", "to fill"),
           NOTHING: ("nothing to write",) * 2, AMBIGUOUS_ACTION: ("ambiguous",) * 2, ARCHIVED: ("archived",) * 2,
           UNCHANGED: ("unchanged",) * 2, REJECTED: ("rejected",) * 2}


def report_lines(customers: dict[str, Any] | None, preview: bool) -> tuple[list[str], list[str], list[str], str]:
    """For the plain report: the dry-run's line per customer, the notes for stderr (ambiguous and rejected
    customers), the fields filled (or, in a preview, to fill), and what the summary line adds; nothing when the
    feed is off."""
    if customers is None:
        return [], [], [], ""
    lines = []
    for plan in customers.get("plans", []):
        account = f" -> {plan['account_id']}" if plan["account_id"] else ""
        match = f", customer {plan['match']}" if plan["match"] else ""
        lines.append(f"customer {plan['customer_id']} ({plan['customer_key']}) {plan['action']}: "
                     f"{plan['name'] or 'no name'}{match}{account}" + (f" ({plan['reason']})" if plan["reason"] else "")
                     + (f"; fills {', '.join(plan['filled'])}" if plan["filled"] else ""))
    notes = [f"rejected customer {c['customer_key']}: {c['reason']} (retried next run)"
             for c in customers["rejected_customers"]]
    notes += [f"ambiguous customer {c['customer_key']}: {c['reason']} (candidates {', '.join(c['candidates'])}); "
              "nothing written" for c in customers["ambiguous_customers"]]
    fills = [f"{'would fill' if preview else 'filled'} empty fields of account {c['account_id'] or 'to create'} "
             f"({c['customer_key']}): {', '.join(c['fields'])}" for c in customers["enriched"]]
    done = ", ".join(f"{customers[action]} {_LABELS[action][preview]}" for action in ACTIONS if customers[action])
    return lines, notes, fills, f"; {customers['read']} customer(s) read" + (f" ({done})" if done else "")
