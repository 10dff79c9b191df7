"""The reference workload of issue #4, seeded into the emulators.

For N completed sales: 3 lines a sale on average (1 to 5), 0.4 N distinct customers (every one buys at least
once), of whom 30% are not in Salesforce, 40% are there without their Lightspeed key (half findable by a
re-capitalised email, half only by their phone written another way), and 30% are already linked by key.
The org also holds 0.1 N Person Accounts the till has never seen. Sales are spread over the 30 days before
`now - 2 h`, so a sync right after the first one finds nothing in its look-back.

With `features` (benchmark.py --features, contract §5's options), the same sales and customers, drawn alike, and
what the options work on besides, drawn from a generator of their own: the customers were created or changed at
moments spread over the same 30 days and have a birthdate (80%) and a postal address (70%) at the till, a third
of the Person Accounts already there have a birthdate and a city typed in the CRM (which enrichment must keep),
and 0.05 N more clients, changed in those 30 days, never bought (30% new to the CRM, 20% findable by email, 20%
by phone, 30% linked by key), as the customer feed finds them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from lspos_sync.demo import assigned
from lspos_sync.emulators.lightspeed import LightspeedEmulator
from lspos_sync.emulators.salesforce import SalesforceEmulator

_CENT = Decimal("0.01")
_FIRST = ("Camille", "Élodie", "Margaux", "Inès", "Théo", "Antoine", "Olivia", "Charlotte", "Grace", "Harper",
          "James", "William", "Henry", "Lucas", "Daniel", "Yuki", "Mei", "Priya", "Aisha", "Omar", "Sofia", "Mateo")
_LAST = ("Dubois", "Laurent", "Moreau", "Fontaine", "Rousseau", "Whitmore", "Sinclair", "Bennett", "Hayes",
         "Nakamura", "Chen", "Kapoor", "Haddad", "García", "Rossi", "Conti", "Jensen", "Novak", "O'Brien", "Park")
_DOMAINS = ("gmail.com", "icloud.com", "outlook.com", "yahoo.com", "orange.fr", "protonmail.com")
_AREAS = ("212", "646", "917", "718", "310", "323", "424", "213", "415", "628")
_SHOPS = (("Madison Avenue", "America/New_York", "0.04", "0.04875"), ("Rodeo Drive", "America/Los_Angeles", "0.095", "0"),
          ("Saint-Honoré", "Europe/Paris", "0.20", "0"))
_CITIES = ("Paris", "New York", "Los Angeles", "Lyon", "San Francisco")
_CATEGORIES = ("Leather Goods", "Silk", "Jewellery", "Watches", "Ready-to-Wear", "Fragrance")

NEW, BY_EMAIL, BY_PHONE, LINKED = "new", "by email", "by phone", "linked"


@dataclass
class Customer:
    customer_id: int
    first: str
    last: str
    email: str
    national: str  # digits
    country: str  # "1" or "33"
    till_phone: str
    kind: str


@dataclass
class Seeded:
    sales: int
    lines: int
    customers: dict[str, int]  # kind -> count
    crm_only: int
    first_sale: datetime
    without_sale: dict[str, int] | None = None  # with `features`: clients who never bought, kind -> count


def seed(lightspeed: LightspeedEmulator, salesforce: SalesforceEmulator, sales: int, now: datetime,
         seed_value: int = 4, features: bool = False) -> Seeded:
    rng = random.Random(seed_value)
    # the features' draws come from a generator of their own, so the sales and customers are drawn as without
    frng = random.Random(f"features-{seed_value}") if features else None
    end = now - timedelta(hours=2)
    start = end - timedelta(days=30)
    shops = [(lightspeed.add_shop(name, zone), Decimal(t1), Decimal(t2)) for name, zone, t1, t2 in _SHOPS]
    items: list[tuple[int, Decimal]] = []
    for index, category in enumerate(_CATEGORIES):
        category_id = lightspeed.add_category(category)
        for number in range(8):
            price = Decimal(rng.choice((95, 165, 230, 495, 690, 980, 1650, 2890, 4600)))
            items.append((lightspeed.add_item(f"{category} piece {number + 1}", custom_sku=f"MV-{index}{number:03d}",
                                              category_id=category_id), price))
    cards = [lightspeed.add_payment_type(name) for name in ("Visa", "Mastercard", "American Express")]

    phones = _Phones(rng)
    count = max(1, round(sales * 0.4))
    kinds = _kinds(count, rng)
    customers = []
    for number, kind in enumerate(kinds):
        first, last, email, country, national, till = _person(rng, phones, str(number))
        customer_id = lightspeed.add_customer(first, last, email=email, phones={"Mobile": till},
                                              **(_profile(frng, number, start) if frng else {}))
        customers.append(Customer(customer_id, first, last, email, national, country, till, kind))
    record_type = salesforce.person_account_record_type_id
    for customer in customers:
        if customer.kind != NEW:
            _crm_account(salesforce, lightspeed.account_id, customer, rng, frng)
    crm_only = round(sales * 0.1)
    for number in range(crm_only):
        country, national = phones.new()
        salesforce.insert("Account", {"RecordTypeId": record_type, "FirstName": rng.choice(_FIRST),
                                      "LastName": rng.choice(_LAST), "PersonEmail": f"contact{number}@example.org",
                                      "PersonMobilePhone": _format(country, national, rng)})

    # every customer buys once, the rest of the sales go to customers at random; then in time order
    buyers = customers + [rng.choice(customers) for _ in range(sales - len(customers))]
    rng.shuffle(buyers)
    moments = sorted(start + timedelta(seconds=rng.uniform(0, 30 * 86400)) for _ in range(sales))
    lines_total = 0
    for moment, customer in zip(moments, buyers):
        shop_id, tax1, tax2 = rng.choice(shops)
        lines = []
        for item_id, price in rng.sample(items, rng.randint(1, 5)):
            quantity = rng.choice((1, 1, 1, 2))
            discount = (quantity * price * Decimal("0.10")).quantize(_CENT, ROUND_HALF_UP) if rng.random() < 0.1 \
                else Decimal(0)
            lines.append({"item_id": item_id, "quantity": quantity, "unit_price": price, "discount": discount,
                          "tax1": tax1, "tax2": tax2})
        lines_total += len(lines)
        lightspeed.add_sale(shop_id, lines, customer_id=customer.customer_id,
                            payments=[{"payment_type_id": rng.choice(cards), "amount": _total(lines)}], at=moment)
    counts = {kind: sum(1 for c in customers if c.kind == kind) for kind in (NEW, BY_EMAIL, BY_PHONE, LINKED)}
    without_sale = _clients_without_sale(lightspeed, salesforce, round(sales * 0.05), frng, phones, start) \
        if frng else None
    return Seeded(sales, lines_total, counts, crm_only, moments[0] if moments else start, without_sale)


def _crm_account(salesforce: SalesforceEmulator, account_id: str, customer: Customer, rng: random.Random,
                 frng: random.Random | None) -> None:
    """The Person Account the CRM already holds for a customer that is not new to it, as its kind says."""
    fields = {"RecordTypeId": salesforce.person_account_record_type_id, "FirstName": customer.first,
              "LastName": customer.last}
    if customer.kind == LINKED:
        fields.update(LS_Customer_ID__c=f"{account_id}-{customer.customer_id}",
                      PersonEmail=customer.email, PersonMobilePhone=customer.till_phone)
    elif customer.kind == BY_EMAIL:
        fields["PersonEmail"] = customer.email.upper() if rng.random() < 0.5 else customer.email.title()
    else:  # the CRM has the phone in another format and no email
        other = _format(customer.country, customer.national, rng)
        while other == customer.till_phone:
            other = _format(customer.country, customer.national, rng)
        fields[rng.choice(("PersonMobilePhone", "Phone", "PersonHomePhone"))] = other
    if frng is not None and frng.random() < 1 / 3:  # typed in the CRM: enrichment keeps them
        fields.update(PersonBirthdate=f"19{frng.randint(50, 99)}-0{frng.randint(1, 9)}-1{frng.randint(0, 9)}",
                      PersonMailingCity="Typedtown")
    salesforce.insert("Account", fields)


def _profile(frng: random.Random, number: int, start: datetime) -> dict:
    """What the till knows of a client beyond §3's fields (a birthdate, an address), and when it last changed."""
    profile: dict = {"at": start + timedelta(seconds=frng.uniform(0, 30 * 86400))}
    if frng.random() < 0.8:  # a local midnight somewhere, in UTC
        profile["dob"] = datetime(frng.randint(1950, 2004), frng.randint(1, 12), frng.randint(1, 28),
                                  tzinfo=start.tzinfo) + timedelta(hours=frng.choice((-2, 0, 4, 5, 8)))
    if frng.random() < 0.7:
        profile["address"] = {"address1": f"{number + 1} {frng.choice(('Rue Cler', 'Park Avenue', 'Sunset Blvd'))}",
                              "address2": frng.choice(("", "", "Apt 3")), "city": frng.choice(_CITIES),
                              "zip": f"{frng.randrange(10_000, 99_999)}", "country": frng.choice(("France", "United States"))}
    return profile


def _clients_without_sale(lightspeed: LightspeedEmulator, salesforce: SalesforceEmulator, count: int,
                          frng: random.Random, phones: _Phones, start: datetime) -> dict[str, int]:
    """Clients created or changed in the 30 days who never bought: only the customer feed reads them."""
    numbers = _Phones(frng)
    numbers.used = phones.used  # no number of a client with sales
    kinds = _kinds(count, frng)
    for number, kind in enumerate(kinds):
        first, last, email, country, national, till = _person(frng, numbers, f"browser{number}")
        customer_id = lightspeed.add_customer(first, last, email=email, phones={"Mobile": till},
                                              **_profile(frng, number, start))
        if kind != NEW:
            _crm_account(salesforce, lightspeed.account_id,
                         Customer(customer_id, first, last, email, national, country, till, kind), frng, frng)
    return {kind: kinds.count(kind) for kind in (NEW, BY_EMAIL, BY_PHONE, LINKED)}


def _kinds(count: int, rng: random.Random) -> list[str]:
    """How `count` customers are found: 30% new, 20% by email, 20% by phone, the rest linked, shuffled."""
    kinds = [NEW] * round(count * 0.3) + [BY_EMAIL] * round(count * 0.2) + [BY_PHONE] * round(count * 0.2)
    kinds += [LINKED] * (count - len(kinds))
    rng.shuffle(kinds)
    return kinds


def _person(rng: random.Random, phones: "_Phones", tag: str) -> tuple[str, str, str, str, str, str]:
    """A client's name, email (`tag` makes it unique), phone's country and national number, and the phone as
    typed at the till."""
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    email = f"{_ascii(first)}.{_ascii(last)}.{tag}@{rng.choice(_DOMAINS)}"
    country, national = phones.new()
    return first, last, email, country, national, _format(country, national, rng)


class _Phones:
    """Unique numbers: US ones in ten area codes, French mobiles."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[tuple[str, str]] = set()

    def new(self) -> tuple[str, str]:
        while True:
            if self.rng.random() < 0.7:
                number = ("1", f"{self.rng.choice(_AREAS)}555{self.rng.randrange(10_000):04d}")
            else:
                number = ("33", f"{self.rng.choice('67')}{self.rng.randrange(100_000_000):08d}")
            # only a number a plan assigns (a tenth of random French mobiles are not), as the draws have always been
            if number not in self.used and assigned(f"+{number[0]}{number[1]}"):
                self.used.add(number)
                return number



def _format(country: str, national: str, rng: random.Random) -> str:
    """One of the ways people write a number: "(415) 555-0134", "+1 415.555.0134", "+33 6 12 34 56 78"..."""
    if country == "1":
        area, exchange, line = national[:3], national[3:6], national[6:]
        return rng.choice((f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}", f"{area}.{exchange}.{line}",
                           f"+1 {area} {exchange} {line}", f"+1{area}{exchange}{line}", f"1-{area}-{exchange}-{line}"))
    pairs = " ".join(national[i:i + 2] for i in range(1, 9, 2))
    return rng.choice((f"+33 {national[0]} {pairs}", f"+33{national}", f"+33 (0){national[0]} {pairs}"))


def _ascii(text: str) -> str:
    import unicodedata

    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum())


def _total(lines: list[dict]) -> Decimal:
    taxable = [line["quantity"] * line["unit_price"] - line["discount"] for line in lines]
    tax1 = sum((amount * line["tax1"] for amount, line in zip(taxable, lines)), Decimal(0))
    tax2 = sum((amount * line["tax2"] for amount, line in zip(taxable, lines)), Decimal(0))
    return sum(taxable, Decimal(0)) + tax1.quantize(_CENT, ROUND_HALF_UP) + tax2.quantize(_CENT, ROUND_HALF_UP)
