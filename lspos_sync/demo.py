"""`lspos-sync demo`: a seeded boutique on the built-in emulators, synced by the real commands run as
subprocesses, on a machine with no credentials. Nothing outside a temporary directory is read or written."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from zoneinfo import ZoneInfo

import click

from lspos_sync.emulators.lightspeed import LightspeedEmulator
from lspos_sync.emulators.salesforce import SalesforceEmulator
from lspos_sync.state import StateStore, utcnow

if TYPE_CHECKING:
    from lspos_sync.output import Output

SEED = 42
CLIENTS = 200
SALES = 400  # completed sales over the month, refunds included
DAYS = 30
_CENT = Decimal("0.01")

# Emulator-only credentials: they open nothing but the emulators this process starts.
_LIGHTSPEED_CREDENTIALS = {"account_id": "182255", "client_id": "demo-client-id",
                           "client_secret": "demo-client-secret", "refresh_token": "demo-refresh-token"}
_SALESFORCE_TOKEN = "demo-salesforce-token"

_SHOPS = (  # name, time zone, tax1, tax2, share of the sales, phone country of most of its clients
    ("Maison Verlaine Madison Avenue", "America/New_York", "0.04", "0.04875", 40, "US"),
    ("Maison Verlaine Rodeo Drive", "America/Los_Angeles", "0.095", "0", 35, "US"),
    ("Maison Verlaine Saint-Honoré", "Europe/Paris", "0.20", "0", 25, "FR"),
)
_CATALOGUE = {  # category -> (description, price, custom SKU or "" for the system SKU)
    "Leather Goods": [("Céleste Top-Handle Bag, Calfskin Noir", "3450", "MV-LG-1001"),
                      ("Arlo Tote, Grained Leather Cognac", "2890", "MV-LG-1002"),
                      ("Mini Lune Crossbody, Lambskin Ivory", "2150", "MV-LG-1003"),
                      ("Weekender 50, Canvas and Leather", "4200", "MV-LG-1004"),
                      ("Compact Zip Wallet, Saffiano Rouge", "690", "MV-LG-2001"),
                      ("Card Holder, Box Calf Navy", "385", "MV-LG-2002"),
                      ("Reversible Belt 30mm, Black/Tan", "560", "")],
    "Silk": [("Carré 90 Silk Twill Scarf 'Jardin d'Hiver'", "495", "MV-SK-0090"),
             ("Silk Twilly 'Équestre'", "210", "MV-SK-0012"),
             ("Cashmere-Silk Shawl 140, Dove Grey", "1250", "MV-SK-0140"),
             ("Silk Pocket Square, Navy Dot", "165", ""),
             ("Silk Tie 8cm, Burgundy Micro-Pattern", "230", "")],
    "Jewellery": [("Étoile Pendant, 18k Yellow Gold", "2800", "MV-JW-0301"),
                  ("Ribbon Ring, 18k Rose Gold", "1650", "MV-JW-0302"),
                  ("Pavé Diamond Stud Earrings 0.5ct", "4900", "MV-JW-0303"),
                  ("Chain Bracelet, Sterling Silver", "720", "MV-JW-0304"),
                  ("Akoya Pearl Drop Earrings", "1380", "MV-JW-0305")],
    "Watches": [("Méridien 36mm Automatic, Steel", "6900", "MV-WT-3600"),
                ("Méridien 40mm Chronograph, Steel and Gold", "11800", "MV-WT-4000"),
                ("Tank 24mm Quartz, Alligator Strap", "3950", "MV-WT-2400")],
    "Ready-to-Wear": [("Double-Faced Cashmere Coat, Camel", "4600", ""),
                      ("Silk Crêpe Blouse, Ivory", "980", ""),
                      ("Merino Crewneck, Charcoal", "620", ""),
                      ("Tailored Wool Trousers, Navy", "850", ""),
                      ("Suede Ankle Boots, Taupe", "1150", ""),
                      ("Leather Loafers, Black", "890", "")],
    "Fragrance": [("Eau de Parfum 'Nuit de Verlaine' 100ml", "285", "MV-FR-0100"),
                  ("Eau de Toilette 'Vétiver Blanc' 50ml", "165", "MV-FR-0050"),
                  ("Scented Candle 'Bibliothèque' 300g", "95", "MV-FR-0300"),
                  ("Travel Spray Set 4 x 10ml", "140", "MV-FR-0410")],
}
_FIRST_NAMES = ("Camille", "Élodie", "Margaux", "Chloé", "Inès", "Louise", "Hélène", "Théo", "Antoine", "Julien",
                "Olivia", "Charlotte", "Amelia", "Grace", "Eleanor", "Harper", "Madison", "Ava", "Sophia", "Emma",
                "James", "William", "Henry", "Alexander", "Benjamin", "Sebastian", "Oliver", "Lucas", "Daniel",
                "Michael", "Yuki", "Haruto", "Mei", "Wei", "Priya", "Arjun", "Aisha", "Omar", "Layla", "Sofia",
                "Mateo", "Valentina", "Giulia", "Lorenzo", "Francesca", "Astrid", "Søren", "Ingrid", "Nadia", "Zoë")
_LAST_NAMES = ("Dubois", "Laurent", "Moreau", "Lefèvre", "Fontaine", "Rousseau", "Beaumont", "Marchand", "Delacroix",
               "Whitmore", "Harrington", "Sinclair", "Vanderbilt", "Ashford", "Kensington", "Bennett", "Carrington",
               "Lowell", "Prescott", "Hayes", "Nakamura", "Tanaka", "Chen", "Wang", "Kapoor", "Mehta", "Haddad",
               "Al-Sayed", "García", "Fernández", "Rossi", "Bianchi", "Ferrari", "Conti", "Lindqvist", "Jensen",
               "Novak", "Kowalski", "O'Brien", "McAllister", "Goldberg", "Rosenthal", "Park", "Kim", "Silva",
               "Costa", "Müller", "Schneider", "Van der Berg", "Ricci")
_EMAIL_DOMAINS = ("gmail.com", "icloud.com", "me.com", "outlook.com", "yahoo.com", "hotmail.fr", "orange.fr",
                  "protonmail.com", "mac.com", "aol.com")
_AREA_CODES = {"America/New_York": ("212", "646", "917", "718"), "America/Los_Angeles": ("310", "323", "424", "213")}



@dataclass
class Client:
    customer_id: int
    first_name: str
    last_name: str
    email: str | None
    phone: str | None  # as typed at the till
    digits: tuple[str, str] | None  # (country code, national number), to write the phone other ways


@dataclass
class Shop:
    shop_id: int
    name: str
    time_zone: str
    tax1: Decimal
    tax2: Decimal
    share: int
    country: str


@dataclass
class Boutique:
    """What the demo seeded, and what it needs to ring up more sales later."""

    shops: list[Shop] = field(default_factory=list)
    items: list[tuple[int, Decimal]] = field(default_factory=list)  # item id, price
    card_types: list[int] = field(default_factory=list)
    cash: int = 0
    clients: list[Client] = field(default_factory=list)
    known: list[Client] = field(default_factory=list)  # clients the CRM already holds under another spelling
    crm_only: list[Client] = field(default_factory=list)  # Person Accounts in Salesforce the till has never seen
    crm_account_ids: set[str] = field(default_factory=set)
    buyers: list[Client] = field(default_factory=list)  # clients with at least one sale, first sale first
    completed: list[int] = field(default_factory=list)  # sale ids in time order, refunds included
    refunds: set[int] = field(default_factory=set)
    voided: set[int] = field(default_factory=set)
    counts: Counter = field(default_factory=Counter)


@dataclass
class Step:
    args: list[str]
    expected: tuple[int, ...]
    exit_code: int = -1
    seconds: float = 0.0
    run: dict[str, Any] | None = None  # the run's summary as the state store recorded it


def run_demo(output: "Output", keep: bool) -> int:
    """Seeds the emulators, runs the real commands against them and prints what they did; 0 when every
    command exited as expected."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="lspos-sync-demo-"))

    def say(line: str) -> None:  # with --json, stdout is kept for the one JSON object
        click.echo(line, err=output.as_json)

    try:
        # The emulator's default Lightspeed bucket (90 units, draining 1 a second) is kept: no run of the demo
        # makes more than about ten Lightspeed requests, so none is throttled and the demo takes seconds.
        with LightspeedEmulator(**_LIGHTSPEED_CREDENTIALS) as lightspeed, \
                SalesforceEmulator(workdir / "tls", access_token=_SALESFORCE_TOKEN) as salesforce:
            now = utcnow()
            rng = random.Random(SEED)
            boutique = seed(lightspeed, salesforce, rng, now)
            say(f"Seeded Lightspeed account {lightspeed.account_id}: {len(boutique.shops)} shops, {len(boutique.items)} "
                f"items, {len(boutique.clients)} clients, {boutique.counts['sales']} completed sales over the last "
                f"{DAYS} days ({boutique.counts['refunds']} refunds, {boutique.counts['voids']} voided), "
                f"{boutique.counts['open']} sales still open.")
            say(f"Seeded Salesforce: {len(boutique.crm_account_ids)} Person Accounts, {len(boutique.known)} of them "
                "clients of the shops under another spelling of their email or another format of their phone.")
            runner = _Runner(say, workdir, lightspeed, salesforce, sync_start=now - timedelta(days=1))
            month_ago = (now - timedelta(days=DAYS + 1)).date().isoformat()
            steps = [runner.run(["dry-run", "--limit", "10"], (0,)),
                     runner.run(["backfill", "--from", month_ago], (0, 3)),
                     runner.run(["sync"], (0, 3))]
            say("")
            say(ring_up_more(lightspeed, boutique, rng))
            tomorrow = (now + timedelta(days=1)).date().isoformat()
            say("The boutique turns on LSPOS_SYNC_CUSTOMERS: every client registered or changed in the window comes "
                "to Salesforce, with a sale or without.")
            steps += [runner.run(["sync"], (0, 3), {"LSPOS_SYNC_CUSTOMERS": "true"}),
                      runner.run(["reconcile", "--from", month_ago, "--to", tomorrow], (0,)),
                      runner.run(["status"], (0,))]
            data = _summary(lightspeed, salesforce, boutique, steps, time.monotonic() - started,
                            workdir if keep else None)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    output.result(data, [""] + _summary_lines(data))
    return data["exit_code"]


class _Runner:
    """Runs `lspos-sync ARGS` as a fresh process, as cron would, configured for the emulators only."""

    def __init__(self, say: Callable[[str], None], workdir: Path, lightspeed: LightspeedEmulator,
                 salesforce: SalesforceEmulator, sync_start: datetime) -> None:
        self.say = say
        self.workdir = workdir
        self.state_path = workdir / "state.db"
        settings = {**lightspeed.env(), "SALESFORCE_INSTANCE_URL": salesforce.instance_url,
                    "SALESFORCE_ACCESS_TOKEN": salesforce.access_token, "LSPOS_STATE_PATH": str(self.state_path),
                    "LSPOS_SYNC_START": sync_start.isoformat(timespec="seconds"), "LSPOS_ROLLUPS": "true"}
        # The settings live in an env file in the temporary directory. The user's .env and state file are never
        # read, and their variables are cleared from the environment, where they would win over the file.
        self.env_file = workdir / "demo.env"
        self.env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSPEED_", "SALESFORCE_", "LSPOS_"))}
        self.env = {**inherited, "SSL_CERT_FILE": str(salesforce.ca_bundle),
                    "REQUESTS_CA_BUNDLE": str(salesforce.ca_bundle),
                    # the emulators are on loopback: a proxy set up for the internet must not be asked for them
                    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def run(self, args: list[str], expected: tuple[int, ...], variables: dict[str, str] | None = None) -> Step:
        """`variables` are set for this run only, and shown before the command as a shell would take them."""
        step = Step(args + ["--env-file", self.env_file.name], expected)
        self.say("")
        self.say("$ " + "".join(f"{name}={value} " for name, value in (variables or {}).items())
                 + f"lspos-sync {' '.join(step.args)}")
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "lspos_sync", *step.args], cwd=self.workdir,
                              env={**self.env, **(variables or {})},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        step.seconds = round(time.monotonic() - began, 1)
        step.exit_code = done.returncode
        for line in done.stdout.rstrip().splitlines():
            self.say(line)
        verdict = "as expected" if step.exit_code in expected else f"expected {' or '.join(map(str, expected))}"
        self.say(f"[exit {step.exit_code}, {verdict}; {step.seconds} s]")
        if args[0] in ("sync", "backfill") and self.state_path.exists():
            with StateStore(self.state_path) as store:
                last = store.recent_runs(1)
            step.run = last[0]["summary"] if last else None
        return step


# ---------------------------------------------------------------------------------------------- seeding
def seed(lightspeed: LightspeedEmulator, salesforce: SalesforceEmulator, rng: random.Random,
         now: datetime) -> Boutique:
    """A month of a three-shop luxury boutique, and a CRM that already knows some of its clients."""
    boutique = Boutique()
    for name, time_zone, tax1, tax2, share, country in _SHOPS:
        boutique.shops.append(Shop(lightspeed.add_shop(name, time_zone), name, time_zone, Decimal(tax1),
                                   Decimal(tax2), share, country))
    for category, items in _CATALOGUE.items():
        category_id = lightspeed.add_category(category)
        for description, price, sku in items:
            boutique.items.append((lightspeed.add_item(description, custom_sku=sku, category_id=category_id),
                                   Decimal(price)))
    boutique.card_types = [lightspeed.add_payment_type(name) for name in ("Visa", "Mastercard", "American Express")]
    boutique.cash = lightspeed.add_payment_type("Cash", type="cash")
    people = _People(rng)
    singles = [people.client(lightspeed, _pick_shop(boutique, rng)) for _ in range(CLIENTS - 4)]
    couples = [people.couple(lightspeed, boutique.shops[0]), people.couple(lightspeed, boutique.shops[2])]
    boutique.clients = singles + [member for couple in couples for member in couple]
    _seed_crm(salesforce, boutique, singles, couples, people, rng)
    _seed_sales(lightspeed, boutique, rng, now)
    return boutique


def _pick_shop(boutique: Boutique, rng: random.Random) -> Shop:
    return rng.choices(boutique.shops, weights=[shop.share for shop in boutique.shops])[0]


class _People:
    """Names, emails and phones that never collide by accident; only the couples share an email, on purpose."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.emails: set[str] = set()
        self.phones: set[tuple[str, str]] = set()

    def name(self) -> tuple[str, str]:
        return self.rng.choice(_FIRST_NAMES), self.rng.choice(_LAST_NAMES)

    def email(self, first: str, last: str) -> str:
        first, last = _ascii(first), _ascii(last)
        while True:
            local = self.rng.choice((f"{first}.{last}", f"{first}{last}", f"{first[0]}.{last}",
                                     f"{first}_{last}{self.rng.randint(10, 99)}", f"{last}.{first}"))
            address = f"{local}@{self.rng.choice(_EMAIL_DOMAINS)}"
            if address not in self.emails:
                self.emails.add(address)
                return address

    def phone(self, shop: Shop) -> tuple[str, str]:
        """(country code, national number): a fictional 555-01xx number near a US shop, a mobile near Paris."""
        while True:
            if shop.country == "US":
                number = ("1", f"{self.rng.choice(_AREA_CODES[shop.time_zone])}5550{self.rng.randint(100, 199)}")
            elif self.rng.random() < 0.8:
                number = ("33", f"6{self.rng.randint(10_000_000, 99_999_999)}")
            else:  # Londoners shopping in Paris, in the range Ofcom keeps for drama (020 7946 0xxx)
                number = ("44", f"2079460{self.rng.randint(100, 999)}")
            # only a number a plan assigns (a tenth of random French mobiles are not), as the draws have always been
            if number not in self.phones and assigned(f"+{number[0]}{number[1]}"):
                self.phones.add(number)
                return number

    def client(self, lightspeed: LightspeedEmulator, shop: Shop) -> Client:
        first, last = self.name()
        email = self.email(first, last) if self.rng.random() < 0.88 else None
        if email and self.rng.random() < 0.15:  # typed at the till with capitals
            email = email.title() if self.rng.random() < 0.5 else email.upper()
        digits = self.phone(shop) if self.rng.random() < 0.85 else None
        phone = _format_phone(digits, self.rng) if digits else None
        use = self.rng.choice(("Mobile", "Mobile", "Mobile", "Home", "Work"))
        customer_id = lightspeed.add_customer(first, last, email=email, phones={use: phone} if phone else None)
        return Client(customer_id, first, last, email, phone, digits)

    def couple(self, lightspeed: LightspeedEmulator, shop: Shop) -> list[Client]:
        """Two clients of one household sharing one email address, each with their own phone."""
        last = self.rng.choice(_LAST_NAMES)
        household = f"{_ascii(last)}.family@{self.rng.choice(_EMAIL_DOMAINS)}"
        members = []
        for first in self.rng.sample(_FIRST_NAMES, 2):
            digits = self.phone(shop)
            phone = _format_phone(digits, self.rng)
            customer_id = lightspeed.add_customer(first, last, email=household, phones={"Mobile": phone})
            members.append(Client(customer_id, first, last, household, phone, digits))
        return members


def assigned(e164: str) -> bool:
    """Whether a numbering plan assigns a number written with its country code (libphonenumber's metadata): the
    demo's and the benchmark's made-up clients have only such numbers, as they always had."""
    import phonenumbers

    return phonenumbers.is_valid_number(phonenumbers.parse(e164))


def _ascii(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum())



def _format_phone(digits: tuple[str, str], rng: random.Random) -> str:
    """One of the ways people write a number: "(415) 555-0134", "+1 415.555.0134", "+33 6 12 34 56 78"..."""
    country, national = digits
    if country == "1":
        area, exchange, line = national[:3], national[3:6], national[6:]
        return rng.choice((f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}", f"{area}.{exchange}.{line}",
                           f"+1 {area} {exchange} {line}", f"+1 {area}.{exchange}.{line}", f"{area}{exchange}{line}",
                           f"1-{area}-{exchange}-{line}", f"+1{area}{exchange}{line}"))
    if country == "33":
        pairs = " ".join(national[i:i + 2] for i in range(1, 9, 2))
        return rng.choice((f"+33 {national[0]} {pairs}", f"+33{national}", f"+33 (0){national[0]} {pairs}"))
    area, rest = national[:2], f"{national[2:6]} {national[6:]}"
    return rng.choice((f"+44 {area} {rest}", f"+44{national}", f"+44 (0){area} {rest}"))


def _other_format(client: Client, rng: random.Random) -> str:
    assert client.digits is not None
    other = _format_phone(client.digits, rng)
    while other == client.phone:
        other = _format_phone(client.digits, rng)
    return other


def _respell(email: str, rng: random.Random) -> str:
    """The same address as someone else typed it, in other capitals."""
    local, _, domain = email.lower().partition("@")
    spelled = rng.choice((f"{local.title()}@{domain}", f"{local}@{domain.upper()}", email.upper(),
                          f"{local.capitalize()}@{domain.capitalize()}"))
    return spelled if spelled != email else spelled.swapcase()


def _seed_crm(salesforce: SalesforceEmulator, boutique: Boutique, singles: list[Client], couples: list[list[Client]],
              people: _People, rng: random.Random) -> None:
    """Person Accounts the CRM already holds: 22 clients under another spelling of their email, 14 under another
    format of their phone, both members of each couple under the shared email (so their sales are Ambiguous),
    and a dozen people met at events whom the till has never seen."""
    by_email = rng.sample([c for c in singles if c.email], 22)
    by_phone = rng.sample([c for c in singles if c.digits and c not in by_email], 14)
    phone_fields = ("PersonMobilePhone", "Phone", "PersonHomePhone")
    for client in by_email:
        assert client.email is not None
        fields = {"PersonEmail": _respell(client.email, rng)}
        if client.digits and rng.random() < 0.5:
            fields[rng.choice(phone_fields)] = _format_phone(client.digits, rng)
        _insert_person(salesforce, boutique, client, fields)
    for client in by_phone:
        fields = {rng.choice(phone_fields): _other_format(client, rng)}
        if rng.random() < 0.5:  # the CRM has their work address, not the one given at the till
            fields["PersonEmail"] = f"{_ascii(client.first_name)}@{_ascii(client.last_name)}-partners.com"
        _insert_person(salesforce, boutique, client, fields)
    for member in (member for couple in couples for member in couple):
        assert member.email is not None
        _insert_person(salesforce, boutique, member, {"PersonEmail": _respell(member.email, rng)})
    boutique.known = by_email + by_phone + [member for couple in couples for member in couple]
    for _ in range(12):
        first, last = people.name()
        digits = people.phone(_pick_shop(boutique, rng))
        contact = Client(0, first, last, people.email(first, last), _format_phone(digits, rng), digits)
        _insert_person(salesforce, boutique, contact, {"PersonEmail": contact.email or "",
                                                      "PersonMobilePhone": contact.phone or ""})
        boutique.crm_only.append(contact)


def _insert_person(salesforce: SalesforceEmulator, boutique: Boutique, person: Client, fields: dict[str, str]) -> None:
    boutique.crm_account_ids.add(salesforce.insert("Account", {
        "RecordTypeId": salesforce.person_account_record_type_id, "FirstName": person.first_name,
        "LastName": person.last_name, **fields}))


def _seed_sales(lightspeed: LightspeedEmulator, boutique: Boutique, rng: random.Random, now: datetime) -> None:
    """SALES completed sales in opening hours over the last DAYS days, refunds and voids rung up after the
    sales they concern, and a few sales left open; applied in time order, as the tills would have."""
    refunds, voids, still_open = 16, 6, 4
    regulars = SALES - refunds
    with_client = int(regulars * 0.75)  # the rest are guests
    # every client the CRM knows buys at least once, so each way of matching shows up
    weights = [rng.choice((1, 1, 1, 2, 3, 6)) for _ in boutique.clients]
    buyers: list[Client | None] = list(boutique.known) + rng.choices(
        boutique.clients, weights=weights, k=with_client - len(boutique.known))
    buyers += [None] * (regulars - with_client)
    rng.shuffle(buyers)
    sales = sorted((_opening_hours(boutique, rng, now), index, customer) for index, customer in enumerate(buyers))
    moment_of = {index: moment for (moment, _), index, _ in sales}
    events: list[tuple[datetime, int, str, int, Client | None]] = [
        (moment, index, "sale", shop, customer) for (moment, shop), index, customer in sales]
    refunded = rng.sample([index for _, index, customer in sales if customer is not None], refunds)
    for index in refunded:
        events.append((min(moment_of[index] + timedelta(hours=rng.uniform(2, 144)), now - timedelta(minutes=90)),
                       index, "refund", 0, None))
    for index in rng.sample([index for _, index, _ in sales if index not in refunded], voids):
        events.append((moment_of[index] + timedelta(minutes=rng.uniform(5, 90)), index, "void", 0, None))
    for number in range(still_open):
        moment, shop = _opening_hours(boutique, rng, now)
        events.append((moment, -1 - number, "open", shop, rng.choice(boutique.clients)))
    sale_ids: dict[int, int] = {}
    for moment, index, kind, shop, customer in sorted(events, key=lambda event: (event[0], event[1])):
        if kind == "sale":
            sale_ids[index] = _ring_up(lightspeed, boutique, rng, boutique.shops[shop], customer, moment)
        elif kind == "refund":
            lines = _line_ids(lightspeed, sale_ids[index])
            some = [rng.choice(lines)] if len(lines) > 1 and rng.random() < 0.5 else None
            refund_id = lightspeed.refund_sale(sale_ids[index], some, at=moment)
            boutique.completed.append(refund_id)
            boutique.refunds.add(refund_id)
        elif kind == "void":
            lightspeed.void_sale(sale_ids[index], at=moment)
            boutique.voided.add(sale_ids[index])
        else:
            _ring_up(lightspeed, boutique, rng, boutique.shops[shop], customer, moment, completed=False)
    boutique.counts.update(sales=len(boutique.completed), refunds=len(boutique.refunds),
                           voids=len(boutique.voided), open=still_open)


def _opening_hours(boutique: Boutique, rng: random.Random, now: datetime) -> tuple[datetime, int]:
    """A moment between 10:00 and 19:00 in a shop's own time zone on one of the last DAYS days, and the shop."""
    while True:
        shop = _pick_shop(boutique, rng)
        zone = ZoneInfo(shop.time_zone)
        day: date = now.astimezone(zone).date() - timedelta(days=rng.randrange(DAYS))
        local = datetime(day.year, day.month, day.day, 10, tzinfo=zone) + timedelta(minutes=rng.randrange(9 * 60))
        if local < now - timedelta(hours=2):
            return local.astimezone(timezone.utc), boutique.shops.index(shop)


def _ring_up(lightspeed: LightspeedEmulator, boutique: Boutique, rng: random.Random, shop: Shop,
             customer: Client | None, at: datetime | None = None, completed: bool = True) -> int:
    """A sale of 1-4 lines with the shop's tax, paid by card, in cash or both."""
    lines = []
    for item_id, price in rng.sample(boutique.items, rng.choices((1, 2, 3, 4), weights=(50, 30, 14, 6))[0]):
        quantity = 2 if price < 300 and rng.random() < 0.2 else 1
        discount = Decimal(0)
        if rng.random() < 0.08:  # a client's courtesy discount
            discount = (quantity * price * Decimal(rng.choice(("0.10", "0.15")))).quantize(_CENT, ROUND_HALF_UP)
        lines.append({"item_id": item_id, "quantity": quantity, "unit_price": price, "discount": discount,
                      "tax1": shop.tax1, "tax2": shop.tax2})
    total = _total(lines)
    draw = rng.random()
    if draw < 0.08:
        payments = [{"payment_type_id": boutique.cash, "amount": total}]
    elif draw < 0.15 and total > 400:
        cash = Decimal(rng.choice((100, 200, 300)))
        payments = [{"payment_type_id": boutique.cash, "amount": cash},
                    {"payment_type_id": rng.choice(boutique.card_types), "amount": total - cash}]
    else:
        payments = [{"payment_type_id": rng.choice(boutique.card_types), "amount": total}]
    sale_id = lightspeed.add_sale(shop.shop_id, lines, customer_id=customer.customer_id if customer else None,
                                  payments=payments if completed else (), completed=completed, at=at)
    if completed:
        boutique.completed.append(sale_id)
        boutique.counts["guest_sales" if customer is None else "client_sales"] += 1
        if customer is not None and customer not in boutique.buyers:
            boutique.buyers.append(customer)
    return sale_id


def _total(lines: list[dict[str, Any]]) -> Decimal:
    """What the till charges: line amounts less discounts, plus each tax summed and rounded to the cent."""
    taxable = [line["quantity"] * line["unit_price"] - line["discount"] for line in lines]
    tax1 = sum((amount * line["tax1"] for amount, line in zip(taxable, lines)), Decimal(0))
    tax2 = sum((amount * line["tax2"] for amount, line in zip(taxable, lines)), Decimal(0))
    return sum(taxable, Decimal(0)) + tax1.quantize(_CENT, ROUND_HALF_UP) + tax2.quantize(_CENT, ROUND_HALF_UP)


def _line_ids(lightspeed: LightspeedEmulator, sale_id: int) -> list[int]:
    lines = lightspeed.sale(sale_id).get("SaleLines", {}).get("SaleLine", [])
    return [int(line["saleLineID"]) for line in (lines if isinstance(lines, list) else [lines])]


def ring_up_more(lightspeed: LightspeedEmulator, boutique: Boutique, rng: random.Random) -> str:
    """The shops keep trading after the first sync: new sales, a void and an edit, as of now."""
    matched = next(c for c in boutique.buyers if c in boutique.known[:22])  # stamped by the backfill
    created = next(c for c in boutique.buyers if c not in boutique.known)  # created by the backfill
    newcomer = lightspeed.add_customer("Anaïs", "Beauchamp", email="anais.beauchamp@icloud.com",
                                       phones={"Mobile": "+33 6 48 27 19 55"})
    contact = boutique.crm_only[0]  # met at a trunk show, already in the CRM, registers at the till today
    walk_in = lightspeed.add_customer(contact.first_name, contact.last_name,
                                      phones={"Mobile": _other_format(contact, rng)})
    # registered at the till for a fitting, nothing bought yet: only the customer feed brings her to Salesforce
    lightspeed.add_customer("Margaux", "Delacroix-Ueda", email="margaux.delacroix@proton.me",
                            phones={"Mobile": "+33 6 12 80 44 31"})
    earlier = [s for s in boutique.completed if s not in boutique.refunds and s not in boutique.voided]
    paris, new_york = boutique.shops[2], boutique.shops[0]
    new_sales = [_ring_up(lightspeed, boutique, rng, new_york, matched), _ring_up(lightspeed, boutique, rng, new_york, created),
                 _ring_up(lightspeed, boutique, rng, paris, Client(newcomer, "Anaïs", "Beauchamp", None, None, None)),
                 _ring_up(lightspeed, boutique, rng, paris, Client(walk_in, contact.first_name, contact.last_name,
                                                                   None, None, None)),
                 _ring_up(lightspeed, boutique, rng, paris, None)]
    voided = earlier[-3]
    lightspeed.void_sale(voided)
    boutique.voided.add(voided)
    edited = next(s for s in reversed(earlier[:-3]) if len(_line_ids(lightspeed, s)) > 1)
    lightspeed.remove_line(edited, _line_ids(lightspeed, edited)[-1])
    boutique.counts.update(sales=len(new_sales), voids=1)
    return (f"Meanwhile, in the shops: {len(new_sales)} new sales (two returning clients, a new client, a CRM "
            f"contact registering at the till, a guest); a client registered for a fitting, with no sale yet; "
            f"sale {voided} voided; a line taken off sale {edited}.")


# ---------------------------------------------------------------------------------------------- report
def _summary(lightspeed: LightspeedEmulator, salesforce: SalesforceEmulator, boutique: Boutique, steps: list[Step],
             seconds: float, kept: Path | None) -> dict[str, Any]:
    transactions = salesforce.records("Sales_Transaction__c")
    accounts = salesforce.records("Account")
    ok = all(step.exit_code in step.expected for step in steps)
    run_fields = ("sales", "records", "salesforce_api_calls", "lightspeed_requests", "lightspeed_throttled")
    return {
        "command": "demo", "outcome": "ok" if ok else "failed", "exit_code": 0 if ok else 1,
        "seconds": round(seconds, 1),
        "seeded": {"shops": len(boutique.shops), "items": len(boutique.items), "clients": len(boutique.clients),
                   "person_accounts_in_salesforce": len(boutique.crm_account_ids),
                   "clients_already_in_salesforce": len(boutique.known),
                   "sales": boutique.counts["sales"], "refunds": boutique.counts["refunds"],
                   "voids": boutique.counts["voids"], "open_sales": boutique.counts["open"],
                   "guest_sales": boutique.counts["guest_sales"]},
        "steps": [{"command": f"lspos-sync {' '.join(step.args)}", "exit_code": step.exit_code,
                   "expected": list(step.expected), "seconds": step.seconds,
                   **({name: step.run.get(name) for name in run_fields} if step.run else {}),
                   **({"ambiguous": step.run.get("ambiguous") or 0} if step.run else {}),
                   **({"customers": _customer_counts(step.run["customers"])} if step.run and step.run.get("customers")
                      else {})}
                  for step in steps],
        "salesforce": {"Account": len(accounts),
                       "Account_created": sum(1 for a in accounts if a["Id"] not in boutique.crm_account_ids),
                       "Account_linked": sum(1 for a in accounts if a["Id"] in boutique.crm_account_ids
                                             and a.get("LS_Customer_ID__c")),
                       "Sales_Transaction__c": len(transactions),
                       "Sales_Line_Item__c": len(salesforce.records("Sales_Line_Item__c"))},
        "lightspeed": {"completed_sales": len(boutique.completed),
                       "lines": sum(len(_line_ids(lightspeed, sale_id)) for sale_id in boutique.completed)},
        "rollups": {"exact": _rollups_exact(accounts, transactions),
                    "accounts": sum(1 for a in accounts if a.get("Purchase_Count__c")),
                    "purchases": int(sum(a.get("Purchase_Count__c") or 0 for a in accounts)),
                    "lifetime_spend": round(sum(a.get("Lifetime_Spend__c") or 0 for a in accounts), 2)},
        "match_status": dict(sorted(Counter(t["Match_Status__c"] for t in transactions).items())),
        "transaction_status": dict(sorted(Counter(t["Status__c"] for t in transactions).items())),
        "kept": str(kept) if kept else None,
    }


def _customer_counts(customers: dict[str, Any]) -> dict[str, Any]:
    """The customer feed's counts (the run history keeps its lists as their lengths)."""
    return {name: value for name, value in customers.items() if isinstance(value, int)}


def _rollups_exact(accounts: list[dict], transactions: list[dict]) -> bool:
    """Whether every account's roll-ups equal what its transactions say, recomputed here independently."""
    spend: Counter = Counter()
    purchases: Counter = Counter()
    for t in transactions:
        if t["Account__c"] and t["Status__c"] in ("Completed", "Refund"):
            spend[t["Account__c"]] += round(t["Total__c"] * 100)
            purchases[t["Account__c"]] += t["Status__c"] == "Completed"
    return all(round((a.get("Lifetime_Spend__c") or 0) * 100) == spend[a["Id"]]
               and (a.get("Purchase_Count__c") or 0) == purchases[a["Id"]] for a in accounts)


def _summary_lines(data: dict[str, Any]) -> list[str]:
    sf, ls = data["salesforce"], data["lightspeed"]
    lines = [
        f"Salesforce now holds {sf['Sales_Transaction__c']} Sales_Transaction__c (Lightspeed has "
        f"{ls['completed_sales']} completed sales), {sf['Sales_Line_Item__c']} Sales_Line_Item__c (Lightspeed: "
        f"{ls['lines']} lines) and {sf['Account']} Accounts ({sf['Account_created']} created by the sync, "
        f"{sf['Account_linked']} existing ones linked to their Lightspeed client).",
        "Match status: " + ", ".join(f"{status} {count}" for status, count in data["match_status"].items()) + ".",
        "Transaction status: " + ", ".join(f"{status} {count}" for status, count in data["transaction_status"].items())
        + ".",
        f"Loyalty roll-ups (LSPOS_ROLLUPS=true): {data['rollups']['accounts']} Person Accounts with purchases, "
        f"{data['rollups']['purchases']} purchases, lifetime spend {data['rollups']['lifetime_spend']:.2f} in all; "
        + ("each equal to its transactions." if data["rollups"]["exact"] else "SOME DIFFER FROM THEIR TRANSACTIONS."),
    ]
    fed = next((step for step in data["steps"] if step.get("customers")), None)
    if fed:
        counts = fed["customers"]
        lines.append(f"Clients without a sale (LSPOS_SYNC_CUSTOMERS=true, second sync): {counts['read']} client(s) "
                     f"registered or changed in its window read, {counts['create']} Person Account(s) created, "
                     f"{counts['stamp']} existing one(s) keyed, {counts['nothing'] + counts['unchanged']} already "
                     f"linked, {counts['ambiguous']} ambiguous (nothing written).")
    failed = [step for step in data["steps"] if step["exit_code"] not in step["expected"]]
    lines += [f"Unexpected: `{step['command']}` exited {step['exit_code']}" for step in failed]
    if data["kept"]:
        lines.append(f"Kept {data['kept']}: try `lspos-sync status --state {data['kept']}/state.db`.")
    lines.append(f"demo {data['outcome']} in {data['seconds']} s")
    return lines
