"""One Lightspeed history, brought to Salesforce by every path the tool has, leaves the same records.

A seeded random world over three days (20-30 clients sharing emails and phones written every which way, a CRM that
already holds some of them, two CRM accounts with one email, one already keyed; 40-80 sales, guests among them,
refunds, voids, and after a first sync lines added, removed, moved to another sale or changed, and a sale's client
changed) is written into one Salesforce emulator per path: one `sync` of the whole history, `backfill --no-bulk`
and `backfill --bulk` (each once half-way and once at the end), cron's `sync` every twelve hours as the sales
arrive, and the composite path one sale a batch. Paths whose runs are at the same moments must leave the same
records; the others may differ only where docs/sync-rules.md says so ("Where the paths may differ").
`SEEDS="4 5 6" pytest tests/test_paths_agree.py` draws other worlds.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import Cli
from lspos_sync.customers import normalise_email, normalise_phone
from lspos_sync.emulators.lightspeed import LightspeedEmulator
from lspos_sync.emulators.salesforce import SalesforceEmulator
from lspos_sync.state import StateStore
from test_bulk_backfill import org_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from soak import SimClock  # noqa: E402 - bench/ is not a package; the soak's simulated Lightspeed clock

ACCOUNT = "182255"


class Paths:
    """One Lightspeed account synced into several orgs, each path with its own state file. Lightspeed rotates its
    refresh token on every use, so the newest one is handed from one state file to the next between runs."""

    def __init__(self, lightspeed: LightspeedEmulator, orgs: dict[str, SalesforceEmulator], workdir: Path,
                 start: datetime) -> None:
        self.lightspeed, self.orgs = lightspeed, orgs
        self.states = {name: workdir / f"{name}.db" for name in orgs}
        self.start = start
        self.last: Path | None = None
        (workdir / "work").mkdir()
        self.workdir = workdir / "work"

    def run(self, name: str, *args: str, constants: dict | None = None) -> None:
        state = self.states[name]
        if self.last is not None and self.last != state:
            with StateStore(self.last) as source, StateStore(state) as target:
                target.save_tokens(ACCOUNT, source.tokens(ACCOUNT))
        self.last = state
        env = {**self.lightspeed.env(), **self.orgs[name].env(), "LSPOS_STATE_PATH": str(state),
               "LSPOS_SYNC_START": (self.start - timedelta(hours=1)).isoformat()}
        result = Cli(env, self.workdir)(*args, "--json", constants=constants)
        assert result.code == 0, f"{name}: {' '.join(args)} exited {result.code}\n{result.stderr[-3000:]}"


@dataclass
class World:
    """What was drawn, for the failure message."""

    seed: int
    log: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        self.log.append(line)


_FIRST = ("Ana", "Bea", "Cy", "Dee", "Eva", "Eli", "Fay", "Gil", "Hal", "Ida", "Jo", "Kim", "Lou", "Max", "Ned", "Ola",
          "Pia", "Quy", "Rui", "Sol", "Tea", "Uma", "Vic", "Wes", "Xia", "Yan", "Zoe", "Ari", "Bo", "Cal")


def _phone_variants(area: str, exchange: str, line: str) -> list[str]:
    return [f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}", f"{area}.{exchange}.{line}",
            f"+1 {area} {exchange} {line}", f"+1{area}{exchange}{line}", f"1-{area}-{exchange}-{line}",
            f"{area}{exchange}{line}", f"+1 ({area}) {exchange}-{line} x12"]


def _email_variants(email: str) -> list[str]:
    return [email, email.upper(), email.title(), f" {email} ", f"{email.capitalize()}  "]


def draw_people(rng: random.Random, lightspeed: LightspeedEmulator, orgs: list[SalesforceEmulator],
                world: World, at: datetime) -> tuple[list[int], set[int]]:
    """~20-30 clients whose emails and phones collide, and a CRM holding some of them; the clients, and those of
    them who share no email or phone with another client (`lonely`)."""
    emails = [f"{name.lower()}{n}@example.com" for n, name in enumerate(rng.sample(_FIRST, 12))]
    phones = [("415", "555", f"{rng.randrange(100, 200):04d}") for _ in range(12)]
    phones = list(dict.fromkeys(phones))
    customers, reached = [], {}
    for number in range(rng.randint(20, 30)):
        email = rng.choice(_email_variants(rng.choice(emails))) if rng.random() < 0.75 else None
        typed = {}
        for use in rng.sample(("Mobile", "Home", "Work"), rng.choice((0, 1, 1, 2))):
            typed[use] = rng.choice(_phone_variants(*rng.choice(phones)))
        first = f"{_FIRST[number]}"
        customer_id = lightspeed.add_customer(first, f"Till{number}", email=email, phones=typed, at=at)
        customers.append(customer_id)
        reached[customer_id] = {normalise_email(email)} | {normalise_phone(number, "US") for number in typed.values()}
        reached[customer_id].discard(None)
        world.note(f"customer {customer_id} {first}: {email!r} {typed}")
    crm = []
    for number in range(rng.randint(4, 8)):
        fields = {"FirstName": f"Crm{number}", "LastName": "Typed"}
        if rng.random() < 0.6:
            fields["PersonEmail"] = rng.choice(_email_variants(rng.choice(emails))).strip()
        if rng.random() < 0.6 or "PersonEmail" not in fields:
            fields[rng.choice(("PersonMobilePhone", "Phone", "PersonHomePhone"))] = rng.choice(
                _phone_variants(*rng.choice(phones)))
        crm.append(fields)
    twin = rng.choice(emails)  # two CRM accounts with one email: ambiguous for whoever has it
    crm += [{"FirstName": "Twin", "LastName": "One", "PersonEmail": twin},
            {"FirstName": "Twin", "LastName": "Two", "PersonEmail": twin.upper()}]
    keyed = rng.choice(customers)  # one already carries its customer's key
    crm.append({"FirstName": "Keyed", "LastName": "Already", "LS_Customer_ID__c": f"{ACCOUNT}-{keyed}",
                "PersonEmail": f"keyed{keyed}@example.org"})
    for fields in crm:
        world.note(f"crm {fields}")
        for org in orgs:
            org.insert("Account", {"RecordTypeId": org.person_account_record_type_id, **fields})
    lonely = {customer for customer, values in reached.items()
              if not any(values & others for other, others in reached.items() if other != customer)}
    return customers, lonely


@dataclass
class Shop:
    shop: int
    items: list[int]
    card: int


def draw_events(rng: random.Random, start: datetime, days: float) -> list[tuple[datetime, str]]:
    """When each thing happens: sales mostly, then refunds, a void and edits among them."""
    moments = sorted(start + timedelta(seconds=rng.uniform(60, days * 86400)) for _ in range(rng.randint(40, 80)))
    events = [(moment, "sell") for moment in moments]
    for _ in range(rng.randint(2, 4)):
        events.append((start + timedelta(seconds=rng.uniform(days * 86400 * 0.3, days * 86400)), "refund"))
    for _ in range(rng.randint(1, 2)):
        events.append((start + timedelta(seconds=rng.uniform(days * 86400 * 0.5, days * 86400)), "void"))
    for _ in range(rng.randint(3, 5)):
        events.append((start + timedelta(seconds=rng.uniform(days * 86400 * 0.55, days * 86400)),
                       rng.choice(("remove_line", "quantity", "add_line", "move_line", "customer"))))
    return sorted(events)


def happen(rng: random.Random, lightspeed: LightspeedEmulator, shop: Shop, customers: list[int], sold: list[int],
           kind: str, at: datetime, world: World, lonely: set[int]) -> None:
    """`kind` happens at `at`. A sale edited or voided is a guest's or a lonely client's: an edit moves a sale's
    update time, so one sync of the whole history meets its client later than cron did, and a void's sale is
    written before the window's; who of two clients sharing an email gets the account then differs, as
    docs/sync-rules.md says ("Who is met first")."""
    def lines(count: int) -> list[dict]:
        return [{"item_id": rng.choice(shop.items), "quantity": rng.choice((1, 1, 2, 3)),
                 "unit_price": rng.choice(("19.99", "45.50", "120.00", "7.25")), "tax1": "0.0825"}
                for _ in range(count)]

    if kind == "sell" or not sold:
        customer = rng.choice(customers) if rng.random() < 0.85 else None
        sale_lines = lines(rng.randint(1, 3))
        sale = lightspeed.add_sale(shop.shop, sale_lines, customer_id=customer, at=at,
                                   payments=[{"payment_type_id": shop.card, "amount": "1.00"}])
        sold.append(sale)
        world.note(f"{at:%d %H:%M} sale {sale} customer {customer}")
        return
    # (and not voided: a voided sale is closed at the till; were its lines edited after, a path that wrote them
    # before the void keeps them, contract §3 "A voided sale keeps its lines", and one that writes it first after
    # does not have them: docs/sync-rules.md, "Where the paths may differ")
    editable = [sale for sale in sold if sale_customer(lightspeed, sale) in lonely | {None}
                and lightspeed.sale(sale)["voided"] != "true"]
    if not editable:
        return
    sale = rng.choice(editable)
    line_ids = [int(line["saleLineID"]) for line in _lines(lightspeed.sale(sale))]
    if kind == "refund":
        refund = lightspeed.refund_sale(sale, at=at)
        sold.append(refund)
        world.note(f"{at:%d %H:%M} refund {refund} of {sale}")
    elif kind == "void":
        lightspeed.void_sale(sale, at=at)
        world.note(f"{at:%d %H:%M} void {sale}")
    elif kind == "remove_line" and len(line_ids) > 1:
        lightspeed.remove_line(sale, line_ids[-1], at=at)
        world.note(f"{at:%d %H:%M} sale {sale}: line {line_ids[-1]} removed")
    elif kind == "quantity" and line_ids:
        lightspeed.set_line_quantity(line_ids[0], 5, at=at)
        world.note(f"{at:%d %H:%M} sale {sale}: line {line_ids[0]} quantity 5")
    elif kind == "move_line" and len(line_ids) > 1 and len(editable) > 1:
        to = rng.choice([other for other in editable if other != sale])
        lightspeed.move_line(line_ids[-1], to, at=at)
        world.note(f"{at:%d %H:%M} sale {sale}: line {line_ids[-1]} moved to sale {to}")
    elif kind == "customer":
        customer = rng.choice(sorted(lonely - {sale_customer(lightspeed, sale)}) + [None])
        lightspeed.set_sale_customer(sale, customer, at=at)
        world.note(f"{at:%d %H:%M} sale {sale}: customer now {customer}")
    else:
        line = lightspeed.add_line(sale, lines(1)[0], at=at)
        world.note(f"{at:%d %H:%M} sale {sale}: line {line} added")


def sale_customer(lightspeed: LightspeedEmulator, sale: int) -> int | None:
    return int(lightspeed.sale(sale)["customerID"]) or None


def _lines(sale: dict) -> list[dict]:
    lines = (sale.get("SaleLines") or {}).get("SaleLine") or []
    return lines if isinstance(lines, list) else [lines]


def differences(expected: dict, got: dict, customer_of: dict[str, int | None], *, same_runs: bool) -> list[str]:
    """What one org holds that the other does not, record by record, the autonumbered `Name`s aside (records
    written in another order are numbered in another order). Between paths whose runs are not at the same moments
    (`same_runs` False), also what docs/sync-rules.md says depends on them ("Where the paths may differ"): the
    `Match_Status__c` of a sale linked to its own client's account (`Linked` in a run after the one that keyed the
    account), and the link of a sale whose client is linked to another client's account or ambiguous (decided once
    a run, against the CRM of that run)."""
    if not same_runs:
        expected, got = (_as_decided(state, customer_of) for state in (expected, got))
    found = []
    for kind in ("transactions", "lines"):
        for key in sorted(expected[kind].keys() | got[kind].keys()):
            one, other = (_unnamed(state[kind].get(key)) for state in (expected, got))
            if one != other:
                if one is None or other is None:
                    found.append(f"{kind} {key}: {one} / {other}")
                else:
                    found.append(f"{kind} {key}: " + ", ".join(
                        f"{name} {one.get(name)!r} / {other.get(name)!r}" for name in sorted(one.keys() | other.keys())
                        if one.get(name) != other.get(name)))
    accounts = {str(sorted(a.items())) for a in expected["accounts"]}, {str(sorted(a.items())) for a in got["accounts"]}
    found += [f"account only in the first: {a}" for a in sorted(accounts[0] - accounts[1])]
    found += [f"account only in this one: {a}" for a in sorted(accounts[1] - accounts[0])]
    return found


def _as_decided(state: dict, customer_of: dict[str, int | None]) -> dict:
    transactions = {}
    for key, record in state["transactions"].items():
        customer = customer_of.get(key)
        if customer is not None and record["Account__c"] == f"{ACCOUNT}-{customer}":
            record = {**record, "Match_Status__c": "Linked"}
        elif customer is not None:
            record = {**record, "Match_Status__c": "not its own account", "Account__c": "not its own account"}
        transactions[key] = record
    return {**state, "transactions": transactions}


def _unnamed(record: dict | None) -> dict | None:
    return None if record is None else {name: value for name, value in record.items() if name != "Name"}


PATHS = ("one_sync", "composite", "bulk", "cron", "tiny_batches")
# (path, the path it must agree with, whether their runs are at the same moments)
COMPARED = (("tiny_batches", "one_sync", True), ("bulk", "composite", True), ("composite", "one_sync", False),
            ("cron", "one_sync", False))


@pytest.mark.parametrize("seed", [int(n) for n in os.environ.get("SEEDS", "1 2 3").split()])
def test_every_path_leaves_the_same_records(seed, tmp_path):
    rng = random.Random(seed)
    world = World(seed)
    end = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    days = 3
    start = end - timedelta(days=days)
    clock = SimClock(start)
    with LightspeedEmulator(clock=clock.now) as lightspeed:
        lightspeed.max_token_requests_per_minute = None
        orgs = {name: SalesforceEmulator(tmp_path / f"tls-{name}") for name in PATHS}
        for org in orgs.values():
            org.start()
        try:
            shop = Shop(lightspeed.add_shop("Union Square", "America/Los_Angeles"),
                        [lightspeed.add_item(f"Piece {n}", custom_sku=f"P-{n}",
                                             category_id=lightspeed.add_category(f"Cat {n % 2}")) for n in range(4)],
                        lightspeed.add_payment_type("Visa"))
            customers, lonely = draw_people(rng, lightspeed, list(orgs.values()), world, start)
            paths = Paths(lightspeed, orgs, tmp_path, start)
            window = ("--from", (start - timedelta(hours=1)).isoformat())
            events = draw_events(rng, start, days)
            half_way = start + timedelta(days=days / 2)
            ticks = [start + timedelta(hours=hours) for hours in range(12, days * 24, 12)]
            sold: list[int] = []
            half_way_done = False
            for tick in ticks + [end]:
                while events and events[0][0] < tick:
                    moment, kind = events.pop(0)
                    if moment > half_way and not half_way_done:
                        clock.set(half_way)
                        paths.run("composite", "backfill", *window, "--no-bulk")
                        paths.run("bulk", "backfill", *window, "--bulk")
                        half_way_done = True
                    happen(rng, lightspeed, shop, customers, sold, kind, moment, world, lonely)
                clock.set(tick)
                paths.run("cron", "sync")
            clock.set(end + timedelta(minutes=1))
            paths.run("one_sync", "sync")
            paths.run("composite", "backfill", *window, "--no-bulk")
            paths.run("bulk", "backfill", *window, "--bulk")
            paths.run("tiny_batches", "backfill", *window, "--no-bulk", constants={"engine.BATCH_SALES": 1})

            states = {name: org_state(org) for name, org in orgs.items()}
            assert len(states["one_sync"]["transactions"]) == len(sold)
            customer_of = {f"{ACCOUNT}-{sale}": sale_customer(lightspeed, sale) for sale in sold}
            disagreements = {f"{name} / {first}": differences(states[first], states[name], customer_of,
                                                              same_runs=same_runs)
                             for name, first, same_runs in COMPARED}
            if any(disagreements.values()):
                pytest.fail("\n".join([f"seed {seed}: the paths disagree"]
                                      + [f"{name}: {line}" for name, lines in disagreements.items() for line in lines]
                                      + world.log), pytrace=False)
        finally:
            for org in orgs.values():
                org.stop()
