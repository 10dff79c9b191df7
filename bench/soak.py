"""Soak: cron's `lspos-sync sync` every ten simulated minutes, for days, with the shops trading and a fault in most runs.

    python bench/soak.py --days 7 --seed 1        # a simulated week; prints the figures
    python bench/soak.py --hours 4 --seed 3       # a few hours
    python bench/soak.py --hours 12 --seed 1 --features rollups,customers,enrich   # contract §5's options on

Each run is the installed program in a fresh process, as cron starts it. The emulators' clock and the program's
clock are one simulated clock: it stands still between runs and jumps ten minutes, and during a run it goes at
the real pace. The Lightspeed and Salesforce emulators read it directly; the program's host clock is set to it
with libfaketime (LD_PRELOAD, from the `libfaketime` package), so token expiry, lag and back-off pauses all live
on it, and the program takes its window from Lightspeed's `Date` header as always.

Between runs the shops sell (some sales left open), void, edit lines of completed and open sales, complete open
sales and refund, at whole seconds of the simulated gap, from a seeded random generator. Most runs get one
fault: kill -9 at a random moment; 5xx or dropped connections on Lightspeed or on Salesforce; a Salesforce
response lost after it committed; a row-lock storm (UNABLE_TO_LOCK_ROW); a lost token-refresh response (the
access token dies first, so that the run refreshes); and, once a simulated day, an hour of Salesforce outage.

Checked, with a comparison written from the emulators' stores and the contract (not with the product's mapping):
after every run that exits 0, Salesforce holds exactly Lightspeed's completed sales (transactions, lines,
account links, amounts); every exit code is one the contract documents, and one the fault may bring
(`ALLOWED_EXITS`: 0 without a fault), and no run prints a traceback; at the end, after fault-free runs, no
duplicate record and no parked sale.

With `--features` (docs/failure-modes.md, "Soak"), the optional features are on in every run, the clients also
come, change and leave without a sale, and the roll-ups, the clients' Person Accounts and their profiles (typed
values kept, blanks filled) are checked too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Callable

from lspos_sync.emulators.lightspeed import TOKEN_PATH, LightspeedEmulator
from lspos_sync.emulators.salesforce import SalesforceEmulator

INTERVAL = timedelta(minutes=10)  # cron's period
OUTAGE = timedelta(hours=1)
START = datetime(2026, 11, 2, 7, 0, tzinfo=timezone.utc)  # a Monday morning; the date itself does not matter
QUIET_RUNS = 3  # fault-free runs at the end, before the final checks
# The faults a run may get (the outage is scheduled apart: once a simulated day, it spans six runs).
FAULTS = ("kill", "lightspeed_5xx", "lightspeed_drop", "salesforce_5xx", "salesforce_drop",
          "salesforce_lost_response", "row_lock_storm", "upsert_race", "lost_token_refresh")
# The exit codes of the contract (§1) each fault may bring, as docs/failure-modes.md describes the tool's answer:
# 1 when a retry budget runs out (the checkpoint held), 3 when records are parked. A kill is death by SIGKILL, or
# 0 when the run finished first. Without a fault, 0.
ALLOWED_EXITS: dict[str | None, set[int]] = {
    None: {0},
    "kill": {0, -signal.SIGKILL},
    "lightspeed_5xx": {0, 1},
    "lightspeed_drop": {0, 1},
    "salesforce_5xx": {0, 1},
    "salesforce_drop": {0, 1},
    "salesforce_lost_response": {0, 1},  # a replayed delete of a line already deleted is done (ENTITY_IS_DELETED)
    "row_lock_storm": {0, 3},
    "upsert_race": {0},  # the raced upserts go again once and match the other client's records
    "lost_token_refresh": {0},  # the refresh is retried with the old token, which still works
    "salesforce_outage": {1},
    # --features only: the responses to the writes of sales' transactions lost after Salesforce committed them,
    # sometimes more often than the retries last (1: the run failed after its writes went in)
    "salesforce_lost_write": {0, 1, 3},
}
FEATURE_FAULTS = ("salesforce_lost_write",)
CENT = Decimal("0.01")
# The optional features of contract §5 that `--features` switches on for every run, and their variables.
FEATURES = {"rollups": "LSPOS_ROLLUPS", "customers": "LSPOS_SYNC_CUSTOMERS", "enrich": "LSPOS_ENRICH_PROFILES"}
# The Person Account fields LSPOS_ENRICH_PROFILES fills when empty (docs/configuration.md), beside §3's.
CONTRACT_FIELDS = ("FirstName", "LastName", "PersonEmail", "PersonMobilePhone", "Phone")
ENRICHED_FIELDS = ("PersonEmail", "PersonMobilePhone", "Phone", "PersonBirthdate", "PersonMailingStreet",
                   "PersonMailingCity", "PersonMailingPostalCode", "PersonMailingCountry")


class SimClock:
    """The simulated clock: set at each run's start, moving at the real pace from there."""

    def __init__(self, start: datetime) -> None:
        self.set(start)

    def set(self, moment: datetime) -> None:
        self._at, self._real = moment, time.monotonic()

    def now(self) -> datetime:
        return self._at + timedelta(seconds=time.monotonic() - self._real)


def faketime_env(moment: datetime) -> dict[str, str]:
    """The variables that start a child process's clock at `moment` (whole seconds, UTC), ticking in real time."""
    import libfaketime

    _, env = libfaketime.get_reload_information()
    return {**env, "TZ": "UTC", "FAKETIME": "@" + moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")}


@dataclass
class Catalogue:
    """What the harness seeded in Lightspeed, kept on its side to compute what Salesforce must hold."""

    account_id: str
    shops: dict[int, str] = field(default_factory=dict)
    items: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # id -> (sku, description, category)
    payment_types: dict[int, str] = field(default_factory=dict)
    customers: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # id -> (first, last, email)
    crm_accounts: dict[int, str] = field(default_factory=dict)  # customer id -> Salesforce Id of its CRM account
    # With --features only: each profile a customer had, as Salesforce fields (docs/field-mapping.md), the values
    # people typed on the CRM accounts, and the customers archived (those archived before any run saw them apart).
    versions: dict[int, list[dict]] = field(default_factory=dict)
    typed: dict[str, dict[str, str]] = field(default_factory=dict)  # CRM account Id -> field -> value typed
    archived: set[int] = field(default_factory=set)
    archived_unseen: set[int] = field(default_factory=set)


@dataclass
class Run:
    index: int
    at: datetime
    fault: str | None
    detail: str
    exit_code: int
    seconds: float
    checked: bool = False
    bit: bool = False  # the fault showed in the emulators (a refused, dropped or killed request or run)
    mismatches: list[str] = field(default_factory=list)
    stderr_tail: str = ""


@dataclass
class Figures:
    """What a soak saw: each run, the merchant's activity, the end state, the final checks."""

    runs: list[Run] = field(default_factory=list)
    events: Counter = field(default_factory=Counter)
    final_problems: list[str] = field(default_factory=list)
    wall: float = 0.0
    host_offset: float | None = None  # the largest host-clock-ahead-of-Lightspeed the runs recorded
    records: dict[str, int] = field(default_factory=dict)  # at the end: sales in Lightspeed, records in Salesforce

    @property
    def mismatches(self) -> list[str]:
        return [f"run {r.index} ({r.fault or 'no fault'}): {m}" for r in self.runs for m in r.mismatches]

    @property
    def bad_exits(self) -> list[Run]:
        return [r for r in self.runs if r.exit_code not in ALLOWED_EXITS[r.fault]]

    def summary(self) -> dict[str, Any]:
        return {
            "runs": len(self.runs),
            "simulated": f"{self.runs[0].at.isoformat()} .. {self.runs[-1].at.isoformat()}" if self.runs else "",
            "faults": dict(Counter(r.fault or "none" for r in self.runs)),
            "faults_that_bit": dict(Counter(r.fault for r in self.runs if r.fault and r.bit)),
            "host_clock_offset_max_seconds": self.host_offset,
            "exits": {str(k): v for k, v in sorted(Counter(r.exit_code for r in self.runs).items())},
            "merchant": dict(self.events),
            "at_the_end": self.records,
            "checks_after_exit_0": sum(r.checked for r in self.runs),
            "mismatches": len(self.mismatches),
            "bad_exits": [(r.index, r.fault, r.exit_code) for r in self.bad_exits],
            "final_problems": self.final_problems,
            "wall_seconds": round(self.wall, 1),
        }


class Soak:
    """The emulators on one simulated clock, the shops seeded in them, and the runs (`run`)."""

    def __init__(self, workdir: Path, seed: int, runs: int, ls_latency: float = 0.0, sf_latency: float = 0.0,
                 say: Callable[[str], None] = lambda text: None, lookback_minutes: int | None = None,
                 void_moves_updatetime: bool = True, features: frozenset[str] = frozenset()) -> None:
        self.workdir, self.seed, self.runs_wanted, self.say = workdir, seed, runs, say
        self.features = frozenset(features)
        if unknown := self.features - set(FEATURES):
            raise ValueError(f"unknown feature(s) {sorted(unknown)}; known: {sorted(FEATURES)}")
        # The customers' activity draws from a generator of its own, so the shops trade as without features.
        self.frng = random.Random(f"features-{seed}")
        self._numbers = 0  # customer numbers: emails and phones unique to one customer, so no match is ambiguous
        self._unseen: set[int] = set()  # customers made since the last run started
        self.lookback_minutes = lookback_minutes
        self.rng = random.Random(seed)
        self.clock = SimClock(START)
        self.lightspeed = LightspeedEmulator(clock=self.clock.now, latency=ls_latency, access_token_ttl=1800)
        self.salesforce = SalesforceEmulator(workdir / "tls", clock=self.clock.now, latency=sf_latency)
        self.lightspeed.void_moves_updatetime = void_moves_updatetime
        self.catalogue = Catalogue(self.lightspeed.account_id)
        self.figures = Figures()
        self.outage_until: datetime | None = None
        self.open_sales: list[int] = []
        self.completed: list[int] = []  # completed, not voided, not refunds: what can be voided, edited, refunded
        self.state_path = workdir / "state" / "lspos.db"
        self._buyers: set[int | None] = set()  # customers with a sale, open or completed: never archived
        self._typical_run = 2.0  # seconds; the kill moment is drawn against it

    # ---------------------------------------------------------------- setting up
    def __enter__(self) -> "Soak":
        self.lightspeed.start()
        self.salesforce.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lightspeed.stop()
        self.salesforce.stop()

    def seed_shops(self, customers: int = 30) -> None:
        ls, cat = self.lightspeed, self.catalogue
        for name, zone in (("Rue Saint-Honoré", "Europe/Paris"), ("Madison Avenue", "America/New_York"),
                           ("Rodeo Drive", "US/Pacific")):
            cat.shops[ls.add_shop(name, zone)] = name
        categories = {name: ls.add_category(name) for name in ("Accessories", "Leather goods", "Jewellery")}
        for i, (description, category) in enumerate((("Silk scarf", "Accessories"), ("Leather bag", "Leather goods"),
                                                     ("Gold ring", "Jewellery"), ("Belt", "Leather goods"),
                                                     ("Sunglasses", "Accessories"), ("Pearl earrings", "Jewellery"))):
            custom = f"SKU-{i:02d}" if i % 2 == 0 else ""
            item_id = ls.add_item(description, custom_sku=custom, category_id=categories[category])
            system = f"21{item_id:010d}"
            cat.items[item_id] = (custom or system, description, category)
        cat.payment_types[ls.add_payment_type("Visa")] = "Visa"
        cat.payment_types[ls.add_payment_type("Cash", type="cash")] = "Cash"
        cat.payment_types[ls.add_payment_type("Amex")] = "Amex"
        for i in range(customers):
            first, last, email = f"Client{i}", f"Soak{i}", f"client{i}@example.com"
            if self.features:
                self._new_customer(first, last, email, crm=i % 3 == 0)
                continue
            customer_id = ls.add_customer(first, last, email=email)
            cat.customers[customer_id] = (first, last, email)
            if i % 3 == 0:  # a third are already in the CRM, typed in by the boutique, and match by email
                cat.crm_accounts[customer_id] = self.salesforce.insert("Account", {
                    "RecordTypeId": self.salesforce.person_account_record_type_id, "FirstName": first,
                    "LastName": last, "PersonEmail": email.upper()})

    def _new_customer(self, first: str, last: str, email: str, crm: bool, at: datetime | None = None) -> int:
        """A customer with phones, a birthday and (mostly) an address; with `crm`, a Person Account the boutique
        typed first, matching by email, with some of the profile fields typed (other values) and the others blank."""
        r, cat = self.frng, self.catalogue
        self._numbers += 1
        n = self._numbers
        phones = {"Mobile": f"415-555-{n:04d}"}
        if r.random() < 0.6:
            phones["Home"] = f"(212) 555-{n:04d}"
        day = datetime(r.randint(1950, 2004), r.randint(1, 12), r.randint(1, 28), tzinfo=timezone.utc)
        dob = day + timedelta(hours=r.choice((-2, -1, 0, 4, 5, 8, 9)))  # a local midnight somewhere, in UTC
        address = None
        if r.random() < 0.75:
            address = {"address1": f"{n} Rue Cler", "address2": r.choice(("", "", "Apt 3")),
                       "city": r.choice(("Paris", "New York", "Los Angeles")), "zip": f"{75000 + n % 20}",
                       "country": r.choice(("France", "United States", ""))}
        profile = {"FirstName": first, "LastName": last, "PersonEmail": email, "PersonMobilePhone": phones["Mobile"],
                   "Phone": phones.get("Home"), "PersonBirthdate": day.date().isoformat(),
                   "PersonMailingStreet": ", ".join(p for p in (address["address1"], address["address2"]) if p)
                   if address else None,
                   **{f: (address or {}).get(k) or None for f, k in (("PersonMailingCity", "city"),
                                                                    ("PersonMailingPostalCode", "zip"),
                                                                    ("PersonMailingCountry", "country"))}}
        if crm:
            typed = {"FirstName": first, "LastName": last, "PersonEmail": email.upper()}
            for name, value in (("PersonMobilePhone", f"+1 (415) 555-{n:04d}"), ("Phone", f"+1 646 555 {n:04d}"),
                                ("PersonBirthdate", "1969-07-20"), ("PersonMailingStreet", "1 Typed Street"),
                                ("PersonMailingCity", "Typedtown"), ("PersonMailingPostalCode", "00000"),
                                ("PersonMailingCountry", "Typedland")):
                if r.random() < 0.5:
                    typed[name] = value
            account_id = self.salesforce.insert("Account", {
                "RecordTypeId": self.salesforce.person_account_record_type_id, **typed})
            cat.typed[account_id] = typed
        customer_id = self.lightspeed.add_customer(first, last, email=email, phones=phones, dob=dob, address=address,
                                                   at=at)
        cat.customers[customer_id] = (first, last, email)
        cat.versions[customer_id] = [profile]
        if crm:
            cat.crm_accounts[customer_id] = account_id
        return customer_id

    def _customer_event(self, at: datetime) -> None:
        """Clients without a sale: a new one (some typed into the CRM first), a name or contact edit, an archive;
        and a completed sale moved to another client or to a guest at the till (its old account's roll-ups change)."""
        r, cat, ls = self.frng, self.catalogue, self.lightspeed
        active = [c for c in cat.customers if c not in cat.archived]
        roll = r.random()
        if roll < 0.45 or not active:
            n = self._numbers + 1
            customer_id = self._new_customer(f"Walkin{n}", f"Soak{n}", f"walkin{n}@example.com",
                                             crm=r.random() < 0.2, at=at)
            self._unseen.add(customer_id)
            self.figures.events["customer_created"] += 1
        elif roll < 0.55:
            customer_id = r.choice(active)
            first, last, email = cat.customers[customer_id]
            first = f"{first.split('-')[0]}-{r.randint(1, 999)}"
            ls.edit_customer(customer_id, at=at, firstName=first)
            cat.customers[customer_id] = (first, last, email)
            cat.versions[customer_id].append({**cat.versions[customer_id][-1], "FirstName": first})
            self.figures.events["customer_renamed"] += 1
        elif roll < 0.75:
            # an email or a mobile changed at the till (only the Contact's timeStamp moves); not for the clients the
            # CRM holds, who match it by email
            pool = [c for c in active if c not in cat.crm_accounts]
            if not pool:
                return
            customer_id = r.choice(pool)
            version = dict(cat.versions[customer_id][-1])
            self._numbers += 1
            if r.random() < 0.6:
                version["PersonEmail"] = f"moved{self._numbers}@example.com"
            else:
                version["PersonMobilePhone"] = f"628-555-{self._numbers:04d}"
            phones = {"Mobile": version["PersonMobilePhone"], **({"Home": version["Phone"]} if version["Phone"] else {})}
            ls.edit_contact(customer_id, at=at, email=version["PersonEmail"], phones=phones)
            first, last, _ = cat.customers[customer_id]
            cat.customers[customer_id] = (first, last, version["PersonEmail"])
            cat.versions[customer_id].append(version)
            self.figures.events["customer_contact_edited"] += 1
        elif roll < 0.90:
            if not self.completed:
                return
            sale_id = r.choice(self.completed)
            customer_id = r.choice(active) if r.random() < 0.8 else None
            self._buyers.add(customer_id)
            ls.set_sale_customer(sale_id, customer_id, at=at)
            self.figures.events["sale_moved_to_another_client"] += 1
        else:
            pool = [c for c in active if c not in self._buyers and c not in cat.crm_accounts]
            if not pool:
                return
            customer_id = r.choice(pool)
            ls.archive_customer(customer_id, at=at)
            cat.archived.add(customer_id)
            if customer_id in self._unseen:
                cat.archived_unseen.add(customer_id)
            self.figures.events["customer_archived"] += 1

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSPEED_", "SALESFORCE_", "LSPOS_"))}
        return {**keep, **self.lightspeed.env(), **self.salesforce.env(), "LSPOS_STATE_PATH": str(self.state_path),
                **{FEATURES[name]: "true" for name in sorted(self.features)},
                "LSPOS_SYNC_START": (START - timedelta(hours=1)).isoformat(),
                **({"LSPOS_LOOKBACK_MINUTES": str(self.lookback_minutes)} if self.lookback_minutes is not None else {})}

    # ---------------------------------------------------------------- the merchant
    def trade(self, since: datetime, until: datetime) -> None:
        """The shops' activity between two runs, at whole seconds in (since, until)."""
        rng = self.rng
        first, last = int(since.timestamp()) + 1, int(until.timestamp()) - 1
        if last < first:  # the last run took the whole gap
            return
        count = rng.choice((0, 1, 2, 2, 3, 4, 5))
        moments = sorted(rng.randint(first, last) for _ in range(count + 3))
        clients: list[int] = []
        if self.features:  # the clients' own activity, merged in time with the shops'
            self._unseen = set()
            clients = sorted(self.frng.randint(first, last) for _ in range(self.frng.choice((0, 0, 1, 1, 2, 3))))
        events = sorted([(m, "shop") for m in moments] + [(m, "client") for m in clients])
        for moment, kind in events:
            at = datetime.fromtimestamp(moment, timezone.utc)
            if kind == "client":
                self._customer_event(at)
                continue
            roll = rng.random()
            if roll < 0.55 or not self.completed:
                self._sell(at)
            elif roll < 0.65:
                self._void(at)
            elif roll < 0.80:
                self._edit(at)
            elif roll < 0.90:
                self._complete(at)
            else:
                self._refund(at)

    def _lines(self) -> list[dict]:
        rng = self.rng
        return [{"item_id": rng.choice(list(self.catalogue.items)), "quantity": rng.choice((1, 1, 2, 3)),
                 "unit_price": f"{rng.randint(500, 90000) / 100:.2f}",
                 "discount": rng.choice(("0", "0", "5.5", "12.125")), "tax1": rng.choice(("0", "0.0825", "0.2")),
                 "tax2": rng.choice(("0", "0", "0.01"))} for _ in range(rng.randint(1, 4))]

    def _sell(self, at: datetime) -> None:
        rng, cat = self.rng, self.catalogue
        customer = rng.choice([c for c in cat.customers if c not in cat.archived]) if rng.random() < 0.75 else None
        self._buyers.add(customer)
        lines = self._lines()
        total = sum(Decimal(l["unit_price"]) * l["quantity"] for l in lines)
        completed = rng.random() > 0.15
        payments = [{"payment_type_id": rng.choice(list(cat.payment_types)), "amount": str(total)}] if completed else []
        if completed and rng.random() < 0.2:  # a split payment, one of them archived (voided at the till)
            payments.append({"payment_type_id": rng.choice(list(cat.payment_types)), "amount": "10",
                             "archived": rng.random() < 0.5})
        sale_id = self.lightspeed.add_sale(rng.choice(list(cat.shops)), lines, customer_id=customer,
                                           payments=payments, completed=completed, at=at)
        (self.completed if completed else self.open_sales).append(sale_id)
        self.figures.events["sold" if completed else "opened"] += 1

    def _void(self, at: datetime) -> None:
        sale_id = self.completed.pop(self.rng.randrange(len(self.completed)))
        self.lightspeed.void_sale(sale_id, at=at)
        self.figures.events["voided"] += 1

    def _edit(self, at: datetime) -> None:
        rng = self.rng
        pool = self.completed + self.open_sales
        sale_id = rng.choice(pool)
        lines = self._line_ids(sale_id)
        what = rng.random()
        if what < 0.4 or not lines:
            self.lightspeed.add_line(sale_id, self._lines()[0], at=at)
        elif what < 0.7 and len(lines) > 1:
            self.lightspeed.remove_line(sale_id, rng.choice(lines), at=at)
        else:
            self.lightspeed.set_line_quantity(rng.choice(lines), rng.choice((1, 2, 4, 5)), at=at)
        self.figures.events["edited"] += 1

    def _complete(self, at: datetime) -> None:
        if not self.open_sales:
            return self._sell(at)
        sale_id = self.open_sales.pop(0)
        self.lightspeed.complete_sale(sale_id, at=at)
        self.completed.append(sale_id)
        self.figures.events["completed"] += 1

    def _refund(self, at: datetime) -> None:
        rng = self.rng
        sale_id = rng.choice(self.completed)
        lines = self._line_ids(sale_id)
        chosen = rng.sample(lines, rng.randint(1, len(lines))) if lines else None
        self.lightspeed.refund_sale(sale_id, chosen, at=at)
        self.figures.events["refunded"] += 1

    def _line_ids(self, sale_id: int) -> list[int]:
        return [int(line["saleLineID"]) for line in _as_list((self.lightspeed.sale(sale_id).get("SaleLines") or {})
                                                             .get("SaleLine"))]

    # ---------------------------------------------------------------- faults
    def schedule(self) -> list[str | None]:
        """The fault of each run: the last QUIET_RUNS none; before them, an hour of outage a simulated day (six
        runs), and in four runs out of five one of FAULTS, each kind in turn from a shuffled deck."""
        rng, runs = self.rng, self.runs_wanted
        plan: list[str | None] = [None] * runs
        active = max(0, runs - QUIET_RUNS)
        per_day = int(timedelta(days=1) / INTERVAL)
        slots = int(OUTAGE / INTERVAL)
        for day_start in range(0, active, per_day):
            room = min(per_day, active - day_start) - slots
            if room > 0:
                begin = day_start + rng.randrange(room)
                for i in range(begin, begin + slots):
                    plan[i] = "salesforce_outage"
        deck: list[str] = []
        for i in range(active):
            if plan[i] is None and rng.random() < 0.8:
                if not deck:
                    deck = list(FAULTS) + (list(FEATURE_FAULTS) if self.features else [])
                    rng.shuffle(deck)
                plan[i] = deck.pop()
        return plan

    def arm(self, fault: str | None, at: datetime) -> str:
        """Arms the fault in the emulators; what it is, for the report."""
        rng, ls, sf = self.rng, self.lightspeed, self.salesforce
        if fault == "lightspeed_5xx":
            count, status = rng.choice((1, 2, 3, 6)), rng.choice((500, 502, 503))
            suffix = rng.choice(("Sale.json", "Sale.json", "SaleVoid.json", "Shop.json"))
            suffix = self._customer_suffix(suffix)
            ls.fail_next(count, status=status, path_suffix=suffix)
            return f"{count} x {status} on {suffix}"
        if fault == "lightspeed_drop":
            count, suffix = rng.choice((1, 2)), rng.choice(("Sale.json", "Sale.json", "SaleVoid.json", "Category.json"))
            suffix = self._customer_suffix(suffix)
            ls.drop_next(count, path_suffix=suffix)
            return f"{count} dropped on {suffix}"
        if fault == "salesforce_5xx":
            count, status = rng.choice((1, 2, 3, 5)), rng.choice((500, 502, 503))
            sf.fail_next(count, status=status, path_contains="/composite")
            return f"{count} x {status} on /composite"
        if fault == "salesforce_drop":
            count = rng.choice((1, 2))
            sf.drop_next(count, path_contains="/composite", after_commit=False)
            return f"{count} connection(s) dropped before Salesforce ran the request"
        if fault == "salesforce_lost_response":
            count = rng.choice((1, 2))
            sf.drop_next(count, path_contains="/composite", after_commit=True)
            return f"{count} response(s) lost after Salesforce committed"
        if fault == "salesforce_lost_write":
            count = self.frng.choice((1, 2, 8, 20))
            sf.drop_next(count, path_contains="/composite", after_commit=True, body_contains="Sales_Transaction__c/")
            return f"{count} response(s) to writes of transactions lost after Salesforce committed"
        if fault == "row_lock_storm":
            count = rng.choice((1, 2, 4, 8))
            sobject = rng.choice((None, "Sales_Transaction__c", "Sales_Line_Item__c", "Account"))
            sf.lock_storm(count, sobject)
            return f"{count} collection write(s) of {sobject or 'any object'} refused with UNABLE_TO_LOCK_ROW"
        if fault == "upsert_race":
            count = rng.choice((1, 2, 4))
            sobject = rng.choice((None, "Sales_Transaction__c", "Sales_Line_Item__c", "Account"))
            sf.upsert_race(count, sobject)
            return f"{count} upsert(s) of new keys of {sobject or 'any object'} lost a race (DUPLICATE_VALUE)"
        if fault == "lost_token_refresh":
            ls.expire_access_tokens()
            ls.drop_next(1, path_suffix=TOKEN_PATH)
            return "access token expired early; the refresh's response lost (the new tokens were minted)"
        if fault == "salesforce_outage":
            if self.outage_until is None or self.outage_until <= at:
                self.outage_until = at + OUTAGE
                sf.outage(self.outage_until)
                return f"Salesforce unavailable until {self.outage_until.isoformat()}"
            return "Salesforce still unavailable"
        if fault == "kill":
            return "kill -9"
        return ""

    def _customer_suffix(self, suffix: str) -> str:
        """With the customer feed, a third of the Lightspeed faults hit its Customer requests instead."""
        return "Customer.json" if "customers" in self.features and self.frng.random() < 0.35 else suffix

    def _trouble(self) -> bool:
        """Whether a request of the run was refused with a 5xx or dropped, on either side."""
        return (any(r.status == 0 or r.status >= 500 for r in self.lightspeed.requests)
                or any(r.dropped or r.status >= 500 for r in self.salesforce.requests))

    def disarm(self) -> None:
        """What a run did not use up is forgotten (an outage lasts its hour)."""
        self.lightspeed.clear_faults()
        self.salesforce.clear_faults()
        if self.outage_until is not None and self.outage_until > self.clock.now():
            self.salesforce.outage(self.outage_until)

    # ---------------------------------------------------------------- running
    def run(self) -> Figures:
        began = time.monotonic()
        plan = self.schedule()
        previous_end = START - INTERVAL
        for index, fault in enumerate(plan):
            # cron's tick, or, after a run that outlasted the gap, the next whole second: the clock never goes back
            at = max(START + index * INTERVAL, previous_end.replace(microsecond=0) + timedelta(seconds=1))
            self.trade(previous_end, at)
            self.clock.set(at)
            # The leaky bucket drains in real time; ten minutes at a drip a second empty it (§6).
            self.lightspeed.set_bucket_level(0.0)
            detail = self.arm(fault, at)
            self.lightspeed.requests.clear()  # each run's requests only: a week's would fill the memory
            self.salesforce.requests.clear()
            storms, races = self.salesforce.lock_storm_left, self.salesforce.upsert_races_left
            run = self._one_run(index, at, fault, detail)
            previous_end = self.clock.now()
            run.bit = (self._trouble() or self.salesforce.lock_storm_left < storms
                       or self.salesforce.upsert_races_left < races or run.exit_code == -signal.SIGKILL)
            self.disarm()
            if run.exit_code == 0:
                run.checked = True
                run.mismatches = compare(self.lightspeed, self.salesforce, self.catalogue)
                if self.features:
                    run.mismatches += compare_features(self.lightspeed, self.salesforce, self.catalogue,
                                                       self.features)
            self.figures.runs.append(run)
            self.say(f"run {index:4d} {at:%a %H:%M} {fault or '-':26s} exit {run.exit_code:3d} {run.seconds:5.1f}s"
                     + (f" MISMATCH {run.mismatches[:3]}" if run.mismatches else "")
                     + (f" {detail}" if detail and run.exit_code not in (0,) else ""))
        self.figures.final_problems = self.final_checks()
        self.figures.wall = time.monotonic() - began
        return self.figures

    def _one_run(self, index: int, at: datetime, fault: str | None, detail: str) -> Run:
        env = {**self.env(), **faketime_env(at)}
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "lspos_sync", "sync"], env=env, cwd=self.workdir,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if fault == "kill":
            time.sleep(self.rng.uniform(0.05, 0.95) * self._typical_run)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        try:
            _, stderr = process.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            stderr += "\n(the soak stopped a run that took over 900 s)"
        seconds = time.monotonic() - started
        if fault is None and process.returncode == 0:  # the kill moment follows what a run takes
            self._typical_run = 0.8 * self._typical_run + 0.2 * seconds
        run = Run(index, at, fault, detail, process.returncode, seconds, stderr_tail=stderr[-2000:])
        if "Traceback" in stderr:
            run.mismatches.append(f"traceback in the output: {stderr[-600:]}")
        return run

    def cli_json(self, *args: str) -> dict:
        env = {**self.env(), **faketime_env(self.clock.now())}
        done = subprocess.run([sys.executable, "-m", "lspos_sync", *args, "--json"], env=env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=300)
        return json.loads(done.stdout)

    def final_checks(self) -> list[str]:
        """After the fault-free runs at the end: no duplicate record, no parked sale, the last run exact."""
        problems = []
        sf = self.salesforce
        want_sales, want_lines = expected_records(self.lightspeed, self.catalogue)
        self.figures.records = {
            "lightspeed_sales": len(self.lightspeed.sale_ids()), "completed_sales": len(want_sales),
            "completed_sale_lines": len(want_lines),
            **{f"salesforce_{name}": len(sf.records(name)) for name in ("Sales_Transaction__c", "Sales_Line_Item__c")},
            "salesforce_person_accounts": sum(1 for a in sf.records("Account") if a.get("IsPersonAccount"))}
        for sobject, key in (("Sales_Transaction__c", "LS_Sale_ID__c"), ("Sales_Line_Item__c", "LS_Sale_Line_ID__c"),
                             ("Account", "LS_Customer_ID__c")):
            counts = Counter(r[key] for r in sf.records(sobject) if r.get(key))
            problems += [f"{count} {sobject} records with {key} {value}" for value, count in counts.items() if count > 1]
        emails = Counter((r.get("PersonEmail") or "").lower() for r in sf.records("Account") if r.get("PersonEmail"))
        problems += [f"{count} Person Accounts with email {email}" for email, count in emails.items() if count > 1]
        listed = self.cli_json("rejects", "list")
        parked = listed.get("rejects", [])
        problems += [f"parked sale {reject.get('sale_key')}: {reject.get('reason')}" for reject in parked]
        if self.features:
            problems += [f"parked customer {reject}" for reject in listed.get("rejected_customers") or []]
        offsets = [row[0] for row in _state_rows(self.state_path, "SELECT json_extract(summary, "
                                                  "'$.host_clock_ahead_seconds') FROM run") if row[0] is not None]
        self.figures.host_offset = max((abs(o) for o in offsets), default=None)
        if self.figures.host_offset is None or self.figures.host_offset > 2:
            problems.append(f"the program's clock was not the emulators' (offsets {sorted(set(offsets))[:5]} s)")
        lag = self.cli_json("checkpoint", "show")["checkpoints"][self.catalogue.account_id]["lag_minutes"]
        if lag is None or not -1 <= lag <= INTERVAL / timedelta(minutes=1):
            problems.append(f"lag {lag} minute(s) after the last run")
        last = self.figures.runs[-1] if self.figures.runs else None
        if last is None or last.exit_code != 0 or last.mismatches:
            problems.append("the last (fault-free) run did not end exact")
        return problems


def _state_rows(path: Path, sql: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


# -------------------------------------------------------------------- the comparison
def _as_list(value: Any) -> list:
    if not value:
        return []
    return value if isinstance(value, list) else [value]


def _money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value)).quantize(CENT, ROUND_HALF_UP)


def _moment(value: str | None) -> datetime | None:
    if not value:
        return None
    text = value.replace("+0000", "+00:00")
    return datetime.fromisoformat(text).astimezone(timezone.utc).replace(microsecond=0)


def expected_records(lightspeed: LightspeedEmulator, catalogue: Catalogue) -> tuple[dict, dict]:
    """What Salesforce must hold, from Lightspeed's store and the contract (§3, §4): transactions by sale key
    and lines by line key, each a dict of the contract's fields ("Account" is the customer key, or None)."""
    acct = catalogue.account_id
    transactions, lines = {}, {}
    for sale_id in lightspeed.sale_ids():
        sale = lightspeed.sale(sale_id)
        if sale["completed"] != "true":
            continue  # open sales are not written (§4 "Which sales")
        key = f"{acct}-{sale_id}"
        payments = [p for p in _as_list((sale.get("SalePayments") or {}).get("SalePayment")) if p["archived"] != "true"]
        methods: list[str] = []
        for payment in payments:
            name = catalogue.payment_types[int(payment["paymentTypeID"])]
            if name not in methods:
                methods.append(name)
        total = Decimal(sale["calcTotal"])
        customer = int(sale["customerID"])
        transactions[key] = {
            "Ticket_Number__c": sale["ticketNumber"],
            "Transaction_Date__c": _moment(sale["completeTime"]),
            "Status__c": "Voided" if sale["voided"] == "true" else "Refund" if total < 0 else "Completed",
            "Shop_Name__c": catalogue.shops[int(sale["shopID"])],
            "Subtotal__c": _money(sale["calcSubtotal"]), "Discount__c": _money(sale["calcDiscount"]),
            "Tax__c": _money(Decimal(sale["calcTax1"]) + Decimal(sale["calcTax2"])), "Total__c": _money(total),
            "Amount_Paid__c": _money(sum((Decimal(p["amount"]) for p in payments), Decimal(0))),
            "Payment_Methods__c": ", ".join(methods) or None,
            "LS_Updated_At__c": _moment(sale["updatetime"]),
            "Account": f"{acct}-{customer}" if customer else None,
        }
        for line in _as_list((sale.get("SaleLines") or {}).get("SaleLine")):
            sku, description, category = catalogue.items[int(line["itemID"])]
            lines[f"{acct}-{line['saleLineID']}"] = {
                "Sale": key, "SKU__c": sku, "Product_Name__c": description, "Category__c": category,
                "Quantity__c": Decimal(line["unitQuantity"]), "Unit_Price__c": _money(line["unitPrice"]),
                "Discount__c": _money(line["calcLineDiscount"]),
                "Tax__c": _money(Decimal(line["calcTax1"]) + Decimal(line["calcTax2"])),
                "Line_Total__c": _money(line["calcTotal"]),
            }
    return transactions, lines


def compare(lightspeed: LightspeedEmulator, salesforce: SalesforceEmulator, catalogue: Catalogue) -> list[str]:
    """Every difference between Salesforce and what it must hold (empty when exact)."""
    want_sales, want_lines = expected_records(lightspeed, catalogue)
    problems: list[str] = []
    accounts = salesforce.records("Account")
    by_customer_key = Counter(a.get("LS_Customer_ID__c") for a in accounts if a.get("LS_Customer_ID__c"))
    account_of = {a["LS_Customer_ID__c"]: a for a in accounts if a.get("LS_Customer_ID__c")}
    transactions = salesforce.records("Sales_Transaction__c")
    have_sales = {t["LS_Sale_ID__c"]: t for t in transactions}
    key_of_id = {t["Id"]: t["LS_Sale_ID__c"] for t in transactions}
    for key in sorted(set(have_sales) - set(want_sales)):
        problems.append(f"transaction {key} is in Salesforce but is no completed sale in Lightspeed")
    for key in sorted(set(want_sales) - set(have_sales)):
        problems.append(f"transaction {key} is missing")
    if len(transactions) != len(have_sales):
        problems.append(f"{len(transactions) - len(have_sales)} duplicate transaction(s)")
    for key, want in want_sales.items():
        have = have_sales.get(key)
        if have is None:
            continue
        for name, value in want.items():
            if name == "Account":
                continue
            got = have.get(name)
            if isinstance(value, Decimal):
                got = _money(got)
            elif isinstance(value, datetime):
                got = _moment(got)
            if got != value:
                problems.append(f"transaction {key} {name}: {got!r}, Lightspeed says {value!r}")
        customer_key = want["Account"]
        if customer_key is None:
            if have.get("Account__c") or have.get("Match_Status__c") != "Guest":
                problems.append(f"transaction {key}: a guest sale linked to {have.get('Account__c')} "
                                f"({have.get('Match_Status__c')})")
            continue
        account = account_of.get(customer_key)
        if account is None or by_customer_key[customer_key] != 1:
            problems.append(f"transaction {key}: {by_customer_key[customer_key]} account(s) carry {customer_key}")
            continue
        if have.get("Account__c") != account["Id"]:
            problems.append(f"transaction {key} linked to {have.get('Account__c')}, not to {account['Id']} "
                            f"({customer_key})")
        if have.get("Match_Status__c") not in ("Linked", "Email", "Created"):
            problems.append(f"transaction {key} Match_Status__c {have.get('Match_Status__c')!r}")
        customer_id = int(customer_key.split("-")[1])
        crm = catalogue.crm_accounts.get(customer_id)
        if crm is not None and account["Id"] != crm:
            problems.append(f"{customer_key} has a new account {account['Id']} beside the CRM's {crm}")
        first, last, email = catalogue.customers[customer_id]
        names = {(v["FirstName"], v["LastName"], v["PersonEmail"]) for v in catalogue.versions.get(customer_id, ())}
        if crm is None and (account.get("FirstName"), account.get("LastName"),
                            (account.get("PersonEmail") or "").lower()) not in (names or {(first, last, email)}):
            problems.append(f"account of {customer_key} reads {account.get('FirstName')} {account.get('LastName')} "
                            f"{account.get('PersonEmail')}")
    lines = salesforce.records("Sales_Line_Item__c")
    have_lines = {l["LS_Sale_Line_ID__c"]: l for l in lines}
    if len(lines) != len(have_lines):
        problems.append(f"{len(lines) - len(have_lines)} duplicate line(s)")
    for key in sorted(set(have_lines) - set(want_lines)):
        problems.append(f"line {key} is in Salesforce but not on a completed sale in Lightspeed")
    for key in sorted(set(want_lines) - set(have_lines)):
        problems.append(f"line {key} is missing")
    for key, want in want_lines.items():
        have = have_lines.get(key)
        if have is None:
            continue
        if key_of_id.get(have.get("Sales_Transaction__c")) != want["Sale"]:
            problems.append(f"line {key} hangs under {key_of_id.get(have.get('Sales_Transaction__c'))}, "
                            f"not {want['Sale']}")
        for name, value in want.items():
            if name == "Sale":
                continue
            got = have.get(name)
            if name == "Quantity__c":
                got = None if got is None else Decimal(str(got))
            elif isinstance(value, Decimal):
                got = _money(got)
            if got != value:
                problems.append(f"line {key} {name}: {got!r}, Lightspeed says {value!r}")
    return problems


def _date(value: Any) -> str | None:
    return None if value in (None, "") else str(value)[:10]


def compare_features(lightspeed: LightspeedEmulator, salesforce: SalesforceEmulator, catalogue: Catalogue,
                     features: frozenset[str]) -> list[str]:
    """The optional features (contract §5) after a run that exited 0, from the emulators' stores and the docs:
    roll-ups (docs/rollups.md) of every account that has sales; with `customers`, a Person Account for every
    non-archived customer (§4 "Customers": keyed, on the CRM's account where the CRM had one); what people typed
    never overwritten, and with `enrich` the blanks filled from the account's own customer (docs/configuration.md,
    LSPOS_ENRICH_PROFILES), without it left blank."""
    problems: list[str] = []
    acct = catalogue.account_id
    accounts = salesforce.records("Account")
    keyed: dict[str, list[dict]] = {}
    for account in accounts:
        if account.get("LS_Customer_ID__c"):
            keyed.setdefault(account["LS_Customer_ID__c"], []).append(account)
    want_sales, _ = expected_records(lightspeed, catalogue)
    if "rollups" in features:
        # Lifetime_Spend__c: the sum of Total__c of Completed and Refund; Purchase_Count__c and the dates: Completed
        # only; a voided sale counts for nothing (docs/rollups.md).
        totals: dict[str, list] = {}
        for key, sale in want_sales.items():
            found = keyed.get(sale["Account"] or "", [])
            if len(found) != 1:
                continue  # a guest sale, or compare() names the missing account
            row = totals.setdefault(found[0]["Id"], [Decimal(0), 0, None, None, found[0]])
            if sale["Status__c"] in ("Completed", "Refund"):
                row[0] += sale["Total__c"]
            if sale["Status__c"] == "Completed":
                when = sale["Transaction_Date__c"]
                row[1] += 1
                row[2] = when if row[2] is None else min(row[2], when)
                row[3] = when if row[3] is None else max(row[3], when)
        for account_id, (spend, count, first, last, account) in totals.items():
            have = salesforce.get("Account", account_id) or {}
            got = (_money(have.get("Lifetime_Spend__c")),
                   None if have.get("Purchase_Count__c") is None else int(have["Purchase_Count__c"]),
                   _moment(have.get("First_Purchase_Date__c")), _moment(have.get("Last_Purchase_Date__c")))
            want = (_money(spend), count, first, last)
            if got != want:
                problems.append(f"roll-ups of {account.get('LS_Customer_ID__c')} ({account_id}): {got}, its sales say "
                                f"{want}")
    for customer_id, versions in catalogue.versions.items():
        key = f"{acct}-{customer_id}"
        found = keyed.get(key, [])
        crm = catalogue.crm_accounts.get(customer_id)
        if customer_id in catalogue.archived_unseen:
            if found:
                problems.append(f"{key} was archived before any run saw it, yet {found[0]['Id']} carries its key")
            continue
        if len(found) > 1:
            problems.append(f"{len(found)} accounts carry {key}")
            continue
        if not found:
            if "customers" in features and customer_id not in catalogue.archived:
                problems.append(f"customer {key} has no Person Account")
            continue
        account = found[0]
        if crm is not None and account["Id"] != crm:
            problems.append(f"{key} is on {account['Id']}, not on the CRM's account {crm}")
            continue
        typed = catalogue.typed.get(account["Id"], {})
        for name in dict.fromkeys(CONTRACT_FIELDS + ENRICHED_FIELDS):
            got = account.get(name)
            got = _date(got) if name == "PersonBirthdate" else got
            if name in typed:
                if got != typed[name]:
                    problems.append(f"{name} of {key} ({account['Id']}) typed {typed[name]!r}, now {got!r}")
                continue
            values = {v[name] for v in versions} - {None}
            if name == "PersonEmail":
                got = got.lower() if got else got
            filled = "enrich" in features and name in ENRICHED_FIELDS  # a blank enrichment fills
            created = crm is None and name in CONTRACT_FIELDS  # what an account the sync creates gets (§3)
            if created or filled or (crm is None and "enrich" in features):
                if values and got not in values:
                    problems.append(f"{name} of {key} ({account['Id']}): {got!r}, Lightspeed had {sorted(values)}")
                elif not values and got is not None:
                    problems.append(f"{name} of {key} ({account['Id']}): {got!r}, Lightspeed has none")
            elif got is not None:
                problems.append(f"{name} of {key} ({account['Id']}) filled with {got!r} (nothing may be, "
                                f"{'a matched account gets its key only' if crm else 'not a field of §3'})")
    return problems


def runs_for(days: float = 0.0, hours: float = 0.0) -> int:
    return max(QUIET_RUNS + 1, int((timedelta(days=days) + timedelta(hours=hours)) / INTERVAL))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=float, default=0.0)
    parser.add_argument("--hours", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ls-latency", type=float, default=0.0, help="seconds added to each Lightspeed answer")
    parser.add_argument("--sf-latency", type=float, default=0.0, help="seconds added to each Salesforce answer")
    parser.add_argument("--lookback", type=int, help="LSPOS_LOOKBACK_MINUTES (default: the tool's, 30)")
    parser.add_argument("--void-moves-nothing", action="store_true",
                        help="a void moves no timestamp of the sale: only the SaleVoid feed shows it")
    parser.add_argument("--quiet", action="store_true", help="no line per run")
    parser.add_argument("--features", default="",
                        help="optional features switched on for every run, comma-separated: "
                             + ", ".join(f"{name} ({variable})" for name, variable in FEATURES.items())
                             + "; the clients then also come and change without a sale, and the checks cover them")
    args = parser.parse_args()
    features = frozenset(name.strip() for name in args.features.split(",") if name.strip())
    if unknown := features - set(FEATURES):
        parser.error(f"unknown feature(s) {', '.join(sorted(unknown))}; known: {', '.join(FEATURES)}")
    runs = runs_for(args.days, args.hours or (0 if args.days else 4))
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="lspos-soak-") as tmp:
        say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
        with Soak(Path(tmp), args.seed, runs, args.ls_latency, args.sf_latency, say=say, lookback_minutes=args.lookback,
                  void_moves_updatetime=not args.void_moves_nothing, features=features) as soak:
            soak.seed_shops()
            figures = soak.run()
    summary = {"seed": args.seed, "started": started.isoformat(timespec="seconds"), "lookback_minutes": args.lookback,
               "void_moves_updatetime": not args.void_moves_nothing,
               **({"features": sorted(features)} if features else {}), **figures.summary()}
    for line in figures.mismatches[:50]:
        print("MISMATCH", line)
    for run in figures.bad_exits:
        print(f"BAD EXIT run {run.index} ({run.fault}): {run.exit_code}: {run.stderr_tail[-400:]}")
    print(json.dumps(summary, indent=2, default=str))
    return 0 if not (figures.mismatches or figures.bad_exits or figures.final_problems) else 1


if __name__ == "__main__":
    sys.exit(main())
