"""`backfill --bulk`: a window written through Bulk API 2.0 ingest jobs, a round at a time.

The sales are read, mapped and found changed or not by the same units as every run (reading, planning); what
differs is when customers are decided. The composite path looks a batch's customers up before planning it,
one `/composite` request a batch. Here a round (up to `ROUND_SALES` sales, about what fills one 100 MB upload
of lines) is gathered first, its sales and customers kept in a SQLite file beside the spooled rows, not in
memory; then its customers are looked up in statements as long as SOQL allows, five to a request; decided by
the rules of customers.py; and the round's writes handed to the BulkWriter, which runs accounts, transactions
and lines as ingest jobs. Only once every job's results are read are the round's sales settled (written or
parked) and the backfill's resume point moved past them: a backfill stopped in the middle of a round writes
that round again, by external IDs, without doubling anything.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sqlite3
import stat
import tempfile
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pickle

from pydantic_core import from_json, to_json

from lspos_sync import mapping
from lspos_sync.customer_feed import CustomerFeed
from lspos_sync.customers import (AMBIGUOUS, CREATED, EMAIL, GUEST, PHONE, Candidates, Resolution, customer_phones,
                                  normalise_email, primary_email, resolve)
from lspos_sync.engine import RESOLVED_KEPT
from lspos_sync.fieldmap import DEFAULT, FieldMap
from lspos_sync.lightspeed.client import LightspeedClient
from lspos_sync.lightspeed.models import Customer, Sale
from lspos_sync.planning import Planner, account_write
from lspos_sync.reading import Reader, batches
from lspos_sync.resolving import Found, Resolver, Recent
from lspos_sync.rolling import RollUps
from lspos_sync.salesforce import queries
from lspos_sync.salesforce.bulk import BulkJobs, BulkWriter
from lspos_sync.salesforce.client import MAX_COLLECTIONS, SalesforceClient
from lspos_sync.salesforce.writer import CompositeWriter
from lspos_sync.state import StateStore
from lspos_sync.summary import RunSummary, Window
from lspos_sync.writing import CREATE_ACCOUNTS, DELETE_LINES, TRANSACTIONS, UPDATE_ACCOUNTS, Write

log = logging.getLogger(__name__)

# Sales read, mapped and stored together: as on the composite path, so a backfill over sales written before checks
# them with as many lookups.
BATCH_SALES = 1000
PLANNED_SALES = 250  # sales of a round planned (and their writes handed over) together
# Sales in a round: 3 lines a sale on average make some 50 MB of line CSV, well inside one 100 MB upload; a
# round with more (long sales) is cut into more jobs. Each round costs four jobs of five calls or so.
ROUND_SALES = 150_000
_OUTCOMES = 5_000  # sales settled (state store written) together
# Sales of a round whose transactions and lines Salesforce has are read at once (a backfill over sales written
# before): their records, about 3.5 KB a sale, are what a re-load holds, not the round's. About half a statement of
# keys; the lines' pages cost the same calls however they are cut.
EXISTING_SALES = 2_000
# A run's round files live in `lspos-bulk-<pid>@<host>-<random>` under the temporary directory, removed when the run
# ends, however it ends, except by SIGKILL or a power cut; the name lets a later run tell such leftovers apart.
_DIRECTORY_PREFIX = "lspos-bulk-"
_DIRECTORY_NAME = re.compile(r"lspos-bulk-(\d+)@(.+)-[^-]+")  # mkdtemp's random suffix holds no "-"

_SCHEMA = """
CREATE TABLE sales (sale_key TEXT PRIMARY KEY, seq INTEGER, sale_id INTEGER, digest TEXT, customer_key TEXT,
                    customer_found INTEGER, known INTEGER, sale BLOB, records BLOB, checked INTEGER DEFAULT 0);
CREATE INDEX sale_customer ON sales (customer_key);
CREATE TABLE customers (customer_key TEXT PRIMARY KEY, seq INTEGER, customer BLOB, added BLOB);
CREATE TABLE decisions (customer_key TEXT PRIMARY KEY, status TEXT, account_id TEXT, account_ref TEXT,
                        reason TEXT, candidates TEXT);
CREATE TABLE pending (kind TEXT, value TEXT, customer_key TEXT);
CREATE INDEX pending_value ON pending (kind, value);
CREATE TABLE existing (sale_key TEXT PRIMARY KEY, id TEXT, account_id TEXT, match_status TEXT);
CREATE TABLE failures (kind TEXT, key TEXT, reason TEXT);
CREATE INDEX failure_key ON failures (key);
CREATE TABLE updated (sale_key TEXT PRIMARY KEY, id TEXT);
CREATE TABLE created (customer_key TEXT PRIMARY KEY, id TEXT);
CREATE TABLE claimed (account_id TEXT PRIMARY KEY);
CREATE TABLE account_writes (kind TEXT, key TEXT, customer_key TEXT, filled TEXT);
CREATE INDEX account_write_key ON account_writes (kind, key);
"""


@dataclass
class _Round:
    """The sales of one round, gathered in a SQLite file in the run's temporary directory."""

    db: sqlite3.Connection
    sales: int = 0
    customers: int = 0
    progress: datetime | None = None  # once settled, every sale changed up to here is written or parked


class BulkBackfill:
    """Runs a backfill window through Bulk API 2.0, with the same result as `Engine.run` with the composite
    writer: parked sales retried first, then voids, then the window's pages."""

    def __init__(self, account_id: str, store: StateStore, lightspeed: LightspeedClient,
                 salesforce: SalesforceClient, *, phone_region: str, person_record_type: str,
                 enrich_profiles: bool = False, field_map: FieldMap = DEFAULT, roll_up: bool = False,
                 sync_customers: bool = False, on_batch: Callable[[int, RunSummary], None] | None = None,
                 jobs: BulkJobs | None = None) -> None:
        self.account_id = account_id
        self.store = store
        self.salesforce = salesforce
        self.region = phone_region
        self.enrich_profiles = enrich_profiles
        self.field_map = field_map
        self.roll_up = roll_up
        self.on_batch = on_batch
        self.composite = CompositeWriter(salesforce)  # lookups, and deletes of stale lines
        enriched = field_map.enrichable() if enrich_profiles else ()
        self.resolver = Resolver(account_id, self.composite, phone_region=phone_region,
                                 person_record_type=person_record_type, enriched=enriched,
                                 check_all=False, kept=PLANNED_SALES,  # the decisions of the sales being planned
                                 match_status=field_map.is_on(mapping.TRANSACTION, "Match_Status__c"))
        self.reader = Reader(lightspeed, field_map, park=self._park,
                             written=lambda sale_id: bool(store.written([mapping.key(account_id, sale_id)])))
        self.planner = Planner(account_id, store, self.reader, self.resolver, field_map, dry_run=False,
                               verify_unchanged=True, enrich_profiles=enrich_profiles, roll_up=False)
        self.customer_feed = CustomerFeed(  # LSPOS_SYNC_CUSTOMERS: clients without a sale, through the REST API
            account_id, store, lightspeed, self.composite, dry_run=False, region=phone_region,
            enrich_profiles=enrich_profiles, look_up=lambda customers: self.resolver.look_up(customers, [])[0],
            record_type_id=self.resolver.person_record_type_id, field_map=field_map) if sync_customers else None
        self._jobs = jobs
        # The decisions of the last customers of earlier rounds whose accounts were written, as the composite path
        # keeps its last customers' for later batches: met again, a customer is linked as she was decided
        # (`Email`, `Created`), not `Linked` by the key the round before stamped.
        self._recent: Recent[str, tuple] = Recent(RESOLVED_KEPT)
        self.stats: dict[str, int] = {}

    def run(self, command: str, window: Window, *, progress: Callable[[datetime], None] | None = None) -> RunSummary:
        summary = RunSummary(command, self.account_id, window)
        if self.customer_feed is not None:
            summary.customers = self.customer_feed.run(window.since, window.until, None)
        remove_leftovers()
        with tempfile.TemporaryDirectory(prefix=f"{_DIRECTORY_PREFIX}{os.getpid()}@{socket.gethostname()}-") \
                as directory:
            self._directory = Path(directory)
            self._round_number = 0
            current = self._new_round()
            parked = [r.sale_id for r in self.store.rejects(self.account_id)]
            if parked:
                log.info("retrying %d rejected sale(s) first", len(parked))
                summary.retried = len(parked)
            read_first: set[int] = set()  # as the engine: each sale once a run, the pages skip these
            for sale_ids in (parked, self.reader.voided(window)):
                sale_ids = [sale_id for sale_id in sale_ids if sale_id not in read_first]
                if sale_ids:
                    for batch in batches(self.reader.sales(self.reader.pages_by_id(sale_ids), summary, None),
                                         BATCH_SALES):
                        read_first.update(sale.sale_id for sale in batch)
                        current = self._gather(current, batch, summary, None)
            latest, in_order = None, True
            with closing(self.reader.window_pages(window, ahead=BATCH_SALES)) as pages:
                for batch in batches(self.reader.sales(pages, summary, window, skip=read_first), BATCH_SALES):
                    for sale in batch:
                        moment = self.reader.place(sale)
                        if moment is not None:
                            in_order = in_order and (latest is None or moment >= latest)
                            latest = max(latest, moment) if latest else moment
                    # As the engine: pages come oldest change first, so once the round is settled every sale
                    # changed up to here is written or parked; out of order, or newest first, only the end counts.
                    in_order = in_order and self.reader.oldest_first
                    moment = min(latest, window.until) if in_order and latest is not None else None
                    current = self._gather(current, batch, summary, moment, progress)
            self._finish(current, summary, progress)
        if self.roll_up:
            rollups = RollUps(self.account_id, self.store, self.composite, self.resolver, self.field_map, dry_run=False)
            rollups.run(summary)
        if progress:
            summary.progress = window.until
            progress(window.until)
        log.info("%s read %d sale(s) from Lightspeed", command, summary.sales_read,
                 extra={"phase": "read", "counts": {"sales": summary.sales_read, "unchanged": summary.unchanged,
                                                    "rejected": len(summary.rejected)}})
        summary.records = dict(self.stats)
        return summary

    # -- gathering a round
    def _new_round(self) -> _Round:
        self._round_number += 1
        db = sqlite3.connect(self._directory / f"round-{self._round_number}.db", isolation_level=None)
        db.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + _SCHEMA)
        db.execute("BEGIN")
        return _Round(db)

    def _gather(self, current: _Round, batch: list[Sale], summary: RunSummary, moment: datetime | None,
                progress: Callable[[datetime], None] | None = None) -> _Round:
        """A batch into the round: mapped, hashed, the unchanged left out, the rest kept with their customers.
        A full round is written before the next batch is taken."""
        self.reader.load_reference()
        sales = list({sale.sale_id: sale for sale in batch}.values())
        sales = self.reader.with_items(self.reader.with_customers(sales))
        built = self.planner.build(sales)
        todo, known = self.planner.changed(sales, built, summary)
        db = current.db
        for sale in todo:
            transaction, lines, digest = built[sale.sale_id]
            sale_key = transaction[mapping.SALE_KEY]
            customer_key = self.resolver.customer_key(sale)
            found = sale.customer is not None
            if customer_key is not None and found and db.execute(
                    "SELECT 1 FROM customers WHERE customer_key = ?", (customer_key,)).fetchone() is None:
                added = None
                if self.field_map.additions.get(mapping.ACCOUNT):
                    raw = self.reader.customer_payload(sale)
                    added = to_json(self.field_map.added_values(mapping.ACCOUNT, {"customer": raw}))
                db.execute("INSERT INTO customers VALUES (?, ?, ?, ?)",
                           (customer_key, current.customers, _freeze(sale.customer), added))
                current.customers += 1
            # A sale met twice in a round (a void, then its page) is written once, as last read.
            db.execute("INSERT OR REPLACE INTO sales VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                       (sale_key, current.sales, sale.sale_id, digest, customer_key, found, sale_key in known,
                        _freeze(sale), to_json([transaction, lines])))
            current.sales += 1
        if moment is not None:
            current.progress = moment
        self.reader.forget(sales)
        if self.on_batch:
            self.on_batch(len(sales), summary)
        if current.sales >= ROUND_SALES:
            self._finish(current, summary, progress)
            return self._new_round()
        return current

    # -- writing a round
    def _finish(self, current: _Round, summary: RunSummary, progress: Callable[[datetime], None] | None) -> None:
        """Decide the round's customers, write its records as ingest jobs, read every result, then settle."""
        db = current.db
        db.execute("COMMIT")
        try:
            if current.sales:
                log.info("bulk round of %d sale(s), %d customer(s)", current.sales, current.customers,
                         extra={"phase": "bulk", "counts": {"sales": current.sales, "customers": current.customers}})
                writer = BulkWriter(self.salesforce, self._directory, self.composite,
                                    on_failed=lambda kind, key, reason: db.execute(
                                        "INSERT INTO failures VALUES (?, ?, ?)", (kind, key, reason)),
                                    on_written=self._on_written(db), jobs=self._jobs)
                self._decide(current, writer)
                self._hand_over(current, writer, summary)
                writer.flush()
                self._delete_unexpected_lines(current, writer)
                for kind, count in writer.stats.records.items():
                    self.stats[kind] = self.stats.get(kind, 0) + count
                if self.roll_up:  # before the outcomes: a sale recorded as written is not written (nor noted) again
                    self._note_rollups(current)
                self._settle(current, summary)
                self._remember(db)
            if current.progress is not None and progress is not None:
                summary.progress = current.progress
                progress(current.progress)
        finally:
            db.close()

    def _on_written(self, db: sqlite3.Connection) -> dict[str, Callable[[str, str, bool], None]]:
        """What a round reads of the rows its jobs wrote: the transactions Salesforce already had (their stale
        lines), and with LSPOS_ROLLUPS the Ids of the accounts it created (their roll-ups)."""
        def transaction(sale_key: str, record_id: str, created: bool) -> None:
            if not created:
                db.execute("INSERT OR REPLACE INTO updated VALUES (?, ?)", (sale_key, record_id))

        def account(customer_key: str, record_id: str, created: bool) -> None:
            db.execute("INSERT OR REPLACE INTO created VALUES (?, ?)", (customer_key, record_id))

        return {TRANSACTIONS: transaction, **({CREATE_ACCOUNTS: account} if self.roll_up else {})}

    def _decide(self, current: _Round, writer: BulkWriter) -> None:
        """Each customer of the round decided by the rules of customers.py, looked up by the resolver as the
        composite path looks them up, five statements as long as SOQL allows to a `/composite` request (the
        Person Account record type with the first)."""
        read: dict[str, tuple[Customer, bytes | None, tuple[str, str | None, list[str]]]] = {}  # until decided

        def people() -> Iterator[tuple[str, str | None, list[str]]]:
            for customer_key, blob, added in current.db.execute(
                    "SELECT customer_key, customer, added FROM customers ORDER BY seq"):
                if (decided := self._recent.get(customer_key)) is not None:  # her account is written: no lookup
                    current.db.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?)", (customer_key, *decided))
                    continue
                customer = _thaw(blob)
                read[customer_key] = (customer, added, self.resolver.person(customer_key, customer))
                yield read[customer_key][2]

        waiting: list[str] = []
        groups = queries.person_account_groups(people(), self.resolver.account_fields, like=self.resolver.like,
                                               limit=self.resolver.budget.limit)
        for count, (keys, _) in enumerate(groups, 1):
            waiting += keys
            if count % MAX_COLLECTIONS == 0:
                self._decide_customers(current, writer, [(key, *read.pop(key)) for key in waiting])
                waiting = []
        if waiting:
            self._decide_customers(current, writer, [(key, *read.pop(key)) for key in waiting])

    def _decide_customers(self, current: _Round, writer: BulkWriter,
                          customers: list[tuple[str, Customer, bytes | None, tuple[str, str | None, list[str]]]]
                          ) -> None:
        """Customers of the round (key, customer, added fields, what the lookups match it by), looked up together
        and decided."""
        candidates = self.resolver.look_up_people([person for *_, person in customers], [])[0]
        for customer_key, customer, added, _ in customers:
            self._decide_one(current, writer, customer_key, customer, candidates, added)

    def _decide_one(self, current: _Round, writer: BulkWriter, customer_key: str, customer: Customer,
                    candidates: Candidates, added: bytes | None) -> None:
        """One customer's decision, and the account write it calls for (kept in the round's accounts spool).

        The accounts created earlier in the round count as candidates, as the composite path's lookup finds them
        in a later batch: a customer matching one of them (same email, or a phone it holds) is linked to it, by
        the same precedence (a key, then the email, then a phone; more than one at a step: ambiguous). As on the
        composite path, the first customer to match an unkeyed account gets it keyed (claims it); the others are
        linked only."""
        db = current.db
        resolution = resolve(customer, customer_key, candidates, self.region)
        account_ref = None
        if resolution.create or resolution.status in (PHONE, AMBIGUOUS):
            resolution, account_ref = self._against_new_accounts(db, customer_key, customer, resolution)
        if resolution.stamp_key and db.execute("INSERT OR IGNORE INTO claimed VALUES (?)",
                                               (resolution.account_id,)).rowcount == 0:
            # as claim_accounts: an unkeyed account matched by two customers is keyed to the first only
            resolution = Resolution(resolution.status, resolution.account_id,
                                    resolution.reason + " (keyed to another customer in this run: linked only)",
                                    account=resolution.account)
        db.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                   (customer_key, resolution.status, resolution.account_id, account_ref, resolution.reason,
                    to_json(list(resolution.candidates))))
        write = self._account_write(db, writer, customer_key, customer, resolution, added)
        if write is not None and write.kind == CREATE_ACCOUNTS:
            self._hold(db, customer_key, write.record)

    def _against_new_accounts(self, db: sqlite3.Connection, customer_key: str, customer: Customer,
                              resolution: Resolution) -> tuple[Resolution, str | None]:
        """The customer's resolution with the round's new accounts among the candidates: `resolution` is the
        lookup's, to create, by phone (a CRM account) or ambiguous. A new account holding the customer's email wins
        over CRM accounts found by phone, one or several (the email comes first). No new account holds an email a
        CRM account has (its customer would have matched that account), but a customer with two phones may find a
        CRM account by one and a new account by the other: the phone step then has two candidates, ambiguous."""
        email = normalise_email(primary_email(customer))
        phones = customer_phones(customer, self.region)
        if email:
            found = [key for (key,) in db.execute(
                "SELECT DISTINCT customer_key FROM pending WHERE kind = 'email' AND value = ?", (email,))]
            if len(found) == 1:
                return Resolution(EMAIL, reason=f"PersonEmail = {email} (already keyed {found[0]}: linked, not "
                                                "re-keyed)"), found[0]
            if len(found) > 1:
                return Resolution(AMBIGUOUS, reason=f"{len(found)} accounts have PersonEmail {email}",
                                  candidates=tuple(found)), None
        if resolution.status == AMBIGUOUS:
            return resolution, None  # several CRM accounts found by phone: more candidates change nothing
        by_phone: list[str] = []
        matched = ""
        for phone in phones:
            for (key,) in db.execute("SELECT DISTINCT customer_key FROM pending WHERE kind = 'phone' AND value = ?",
                                     (phone,)):
                if key not in by_phone:
                    by_phone.append(key)
                    matched = matched or phone
        if by_phone and resolution.status == PHONE:  # a CRM account by one phone, a new account by another
            return Resolution(AMBIGUOUS, reason=f"{len(by_phone) + 1} accounts share the customer's phone",
                              candidates=(resolution.account_id, *by_phone)), None  # type: ignore[arg-type]
        if resolution.status == PHONE:
            return resolution, None
        if len(by_phone) == 1:
            return Resolution(PHONE, reason=f"phone {matched} (already keyed {by_phone[0]}: linked, not re-keyed)"), \
                by_phone[0]
        if len(by_phone) > 1:
            return Resolution(AMBIGUOUS, reason=f"{len(by_phone)} accounts share the customer's phone",
                              candidates=tuple(by_phone)), None
        return resolution, None

    def _hold(self, db: sqlite3.Connection, customer_key: str, record: dict[str, Any]) -> None:
        """An account created in the round, indexed by what the record holds, read as a lookup reads the account
        once in Salesforce (its email, and its phones as E.164): a later customer of the round matches it exactly
        when the composite path's lookup would find it. Not by every phone of the customer: `Phone` holds only the
        first Home or Work number."""
        names = self.field_map
        held = queries.person_account({"Id": customer_key, **names.incoming(mapping.ACCOUNT, names.outgoing(
            mapping.ACCOUNT, record))}, self.region)
        db.executemany("INSERT INTO pending VALUES (?, ?, ?)",
                       ([("email", held.email, customer_key)] if held.email else []) +
                       [("phone", phone, customer_key) for phone in held.phones])

    def _account_write(self, db: sqlite3.Connection, writer: BulkWriter, customer_key: str, customer: Customer,
                       resolution: Resolution, added: bytes | None) -> Write | None:
        """The planner's account write for the customer (create it, or stamp the key and fill empty fields), to
        the writer; which sales depend on it is in the round's file."""
        write = account_write(customer_key, customer, resolution, (), account_id=self.account_id,
                              record_type_id=self.resolver.person_record_type_id, enrich_profiles=self.enrich_profiles,
                              field_map=self.field_map, added=from_json(added) if added else None)
        if write is None:
            return None
        writer.write([write])
        key = customer_key if write.kind == CREATE_ACCOUNTS else resolution.account_id
        db.execute("INSERT INTO account_writes VALUES (?, ?, ?, ?)",
                   (write.kind, key, customer_key, to_json(list(write.filled)) if write.filled else None))
        return write

    def _hand_over(self, current: _Round, writer: BulkWriter, summary: RunSummary) -> None:
        """The round's sales planned by the Planner, as on the composite path, a batch at a time, with their
        customers' decisions and what Salesforce has of them; the plan's writes handed to the writer."""
        db = current.db
        stale = self._existing(current)
        if self.roll_up:  # before any transaction goes: once a job moves a sale, no later run reads where it was
            self.store.add_pending_rollups(self.account_id, {account for (account,) in db.execute(
                "SELECT account_id FROM existing") if account})
        rows = db.execute(
            "SELECT s.sale_key, s.sale, s.records, s.digest, s.checked, d.customer_key, d.status, d.account_id, "
            "d.account_ref, d.reason, d.candidates, e.id, e.account_id, e.match_status FROM sales s "
            "LEFT JOIN decisions d USING (customer_key) LEFT JOIN existing e USING (sale_key) ORDER BY s.seq")
        while chunk := rows.fetchmany(PLANNED_SALES):
            sales, built, checked, existing = [], {}, set(), {}
            self.resolver.decisions.clear()
            for sale_key, blob, records, digest, was_checked, customer_key, status, account_id, account_ref, \
                    reason, candidates, transaction_id, linked_to, match_status in chunk:
                sale = _thaw(blob)
                transaction, lines = from_json(records)
                sales.append(sale)
                built[sale.sale_id] = (transaction, lines, digest)
                if was_checked:
                    checked.add(sale_key)
                if transaction_id is not None:  # what the planner reads of the transaction Salesforce has
                    existing[sale_key] = {"Account__c": linked_to, "Match_Status__c": match_status}
                if customer_key is not None:  # decided: what the planner reads of it (no account write: done)
                    self.resolver.decisions[customer_key] = Resolution(
                        status, account_id, reason, candidates=tuple(from_json(candidates)), account_key=account_ref)
            customers = {self.resolver.customer_key(sale): sale.customer for sale in sales
                         if sale.customer is not None and self.resolver.customer_key(sale) in self.resolver.decisions}
            keys = {built[sale.sale_id][0][mapping.SALE_KEY] for sale in sales}
            found = Found(customers, Candidates(), existing, checked, {key: stale[key] for key in keys if key in stale})
            writer.write(self.planner.plan(sales, built, found, summary).writes)

    def _existing(self, current: _Round) -> dict[str, list[str]]:
        """As the resolver reads them before writing: the transactions Salesforce has of the sales written before
        and of those linked to no account (a hand link is kept), with their account and match status, into the
        round's `existing` table; and the lines they have that the sales no longer have, by sale key. Statements
        as long as SOQL allows, five a request; EXISTING_SALES sales at a time."""
        db = current.db
        stale: dict[str, list[str]] = {}
        after = 0
        while chunk := db.execute(
                "SELECT s.rowid, s.sale_key FROM sales s LEFT JOIN decisions d USING (customer_key) WHERE s.rowid > ? "
                "AND (s.known OR s.customer_key IS NULL OR NOT s.customer_found "
                "OR (d.account_id IS NULL AND d.account_ref IS NULL AND d.status != ?)) ORDER BY s.rowid LIMIT ?",
                (after, CREATED, EXISTING_SALES)).fetchall():
            after = chunk[-1][0]
            checked = [key for _, key in chunk]
            db.executemany("UPDATE sales SET checked = 1 WHERE sale_key = ?", ((key,) for key in checked))
            found = self.resolver.existing(checked)
            db.executemany("INSERT OR REPLACE INTO existing VALUES (?, ?, ?, ?)",
                           ((key, record["Id"], record.get("Account__c"), record.get("Match_Status__c"))
                            for key, record in found.items()))
            if found:
                stale.update(self.resolver.stale_lines({record["Id"]: key for key, record in found.items()},
                                                       _current_lines(db, found)))
        return stale

    def _delete_unexpected_lines(self, current: _Round, writer: BulkWriter) -> None:
        """Sales Salesforce already had though nothing said so before writing (a lost state file, another state
        store): their lines that Lightspeed no longer has are deleted now, as the settler does; EXISTING_SALES
        sales at a time."""
        db = current.db
        after = 0
        while chunk := db.execute(
                "SELECT u.rowid, u.sale_key, u.id FROM updated u JOIN sales s USING (sale_key) "
                "WHERE u.rowid > ? AND NOT s.checked ORDER BY u.rowid LIMIT ?", (after, EXISTING_SALES)).fetchall():
            after = chunk[-1][0]
            unexpected = {record_id: key for _, key, record_id in chunk}
            deletes = [Write(DELETE_LINES, line_id, (key,))
                       for key, line_ids in self.resolver.stale_lines(
                           unexpected, _current_lines(db, unexpected.values())).items()
                       for line_id in line_ids]
            if deletes:
                writer.delete(deletes)

    def _settle(self, current: _Round, summary: RunSummary) -> None:
        """Per sale: written when every record it depends on went through, else parked with the reasons (its
        account's, its transaction's, its lines'), exactly as the settler parks refused composite records."""
        db = current.db
        rows = db.execute(
            "WITH reasons AS ("
            " SELECT f.key AS sale_key, f.kind || ': ' || f.reason AS reason, f.rowid AS n FROM failures f"
            "  WHERE f.kind NOT IN (?, ?)"
            " UNION ALL SELECT s.sale_key, f.kind || ': ' || f.reason, f.rowid FROM failures f"
            "  JOIN account_writes a ON a.kind = f.kind AND a.key = f.key"
            "  JOIN sales s ON s.customer_key = a.customer_key)"
            " SELECT s.sale_key, s.sale_id, s.digest, s.customer_key, s.customer_found, d.status, r.reason"
            " FROM sales s LEFT JOIN decisions d USING (customer_key) LEFT JOIN reasons r USING (sale_key)"
            " ORDER BY s.seq, r.n", (CREATE_ACCOUNTS, UPDATE_ACCOUNTS))
        written: dict[str, tuple[str, str]] = {}
        rejected: dict[str, tuple[int, str]] = {}
        last: tuple | None = None
        reasons: list[str] = []

        def settle(row: tuple, reasons: list[str]) -> None:
            sale_key, sale_id, digest, customer_key, customer_found, status, _ = row
            if reasons:
                reason = "; ".join(dict.fromkeys(reasons))
                rejected[sale_key] = (sale_id, reason)
                summary.parked(sale_key, sale_id, reason)
            else:
                written[sale_key] = (digest, status if customer_key and customer_found and status else GUEST)
                summary.wrote(sale_key)
            if len(written) + len(rejected) >= _OUTCOMES:
                self.store.record_outcomes(self.account_id, written, rejected)
                written.clear()
                rejected.clear()

        for row in rows:
            if last is not None and row[0] != last[0]:
                settle(last, reasons)
                reasons = []
            if row[6]:
                reasons.append(row[6])
            last = row
        if last is not None:
            settle(last, reasons)
        if written or rejected:
            self.store.record_outcomes(self.account_id, written, rejected)
        failed_accounts = {(kind, key) for kind, key in db.execute(
            "SELECT kind, key FROM failures WHERE kind = ?", (UPDATE_ACCOUNTS,))}
        for key, customer_key, filled in db.execute(
                "SELECT key, customer_key, filled FROM account_writes WHERE kind = ? AND filled IS NOT NULL",
                (UPDATE_ACCOUNTS,)):
            if (UPDATE_ACCOUNTS, key) not in failed_accounts:
                summary.enriched.append({"account_id": key, "customer_key": customer_key,
                                         "fields": [self.field_map.field(mapping.ACCOUNT, f)
                                                    for f in from_json(filled)]})

    def _remember(self, db: sqlite3.Connection) -> None:
        """The round's decisions, newest (by last sale) last, kept for the next rounds; not those whose account
        write, or the new account they link to, Salesforce refused (decided afresh, as the composite path does)."""
        for customer_key, *decided in db.execute(
                "SELECT d.customer_key, d.status, d.account_id, d.account_ref, d.reason, d.candidates "
                "FROM decisions d WHERE NOT EXISTS (SELECT 1 FROM account_writes a JOIN failures f "
                " ON f.kind = a.kind AND f.key = a.key WHERE a.customer_key IN (d.customer_key, d.account_ref)) "
                "ORDER BY (SELECT MAX(s.seq) FROM sales s WHERE s.customer_key = d.customer_key)"):
            self._recent.pop(customer_key, None)
            self._recent[customer_key] = tuple(decided)

    def _note_rollups(self, current: _Round) -> None:
        """LSPOS_ROLLUPS: the accounts whose transactions the round changed (where each sale is linked now, and
        where it was), kept in the state store for the roll-ups at the end of the run, as RollUps.note does."""
        touched = {account for (account,) in current.db.execute(
            "SELECT e.account_id FROM sales s JOIN existing e USING (sale_key) "
            "UNION SELECT CASE WHEN d.status = ? THEN NULL ELSE COALESCE(d.account_id, c.id) END "
            "FROM sales s JOIN decisions d USING (customer_key) "
            "LEFT JOIN created c ON c.customer_key = COALESCE(d.account_ref, s.customer_key)", (AMBIGUOUS,))
            if account}
        self.store.add_pending_rollups(self.account_id, touched)

    def _park(self, sale_id: int, reason: str, summary: RunSummary) -> None:
        """A sale Lightspeed sent malformed: parked, to be read again by later runs (as the settler parks it)."""
        sale_key = mapping.key(self.account_id, sale_id)
        summary.parked(sale_key, sale_id, reason)
        self.store.record_outcomes(self.account_id, {}, {sale_key: (sale_id, reason)})



# A round's sales and customers wait in the round's own SQLite file (never read by anything but this run), as the
# models themselves: pickled, so that what is planned is exactly what was read.
def _freeze(model: Sale | Customer | None) -> bytes:
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def _current_lines(db: sqlite3.Connection, sale_keys: Iterable[str]) -> dict[str, set[str] | None]:
    """The line keys each sale has in Lightspeed now, from the round's file (`mapping.current_lines`)."""
    lines = {}
    for key in sale_keys:
        (records,) = db.execute("SELECT records FROM sales WHERE sale_key = ?", (key,)).fetchone()
        transaction, sale_lines = from_json(records)
        lines[key] = mapping.current_lines(transaction, sale_lines)
    return lines


def _thaw(blob: bytes) -> Any:
    return pickle.loads(blob)  # noqa: S301 - written by this run, in its own temporary directory


def remove_leftovers(root: Path | None = None) -> list[Path]:
    """Removes the round files of earlier bulk runs killed before they could (SIGKILL, power cut): the directories
    of this host and user whose process is gone. A live process's directory is left alone, and so is another
    host's (containers sharing one /tmp see each other's files, not each other's processes) or another user's."""
    root = Path(root or tempfile.gettempdir())
    host, removed = socket.gethostname(), []
    for path in root.glob(f"{_DIRECTORY_PREFIX}*"):
        named = _DIRECTORY_NAME.fullmatch(path.name)
        if named is None or named[2] != host:
            continue
        try:
            found = path.lstat()
        except FileNotFoundError:  # removed meanwhile by another run starting
            continue
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or _alive(int(named[1])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the round files of a bulk run killed before it finished: %s", path)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process of that id runs (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
