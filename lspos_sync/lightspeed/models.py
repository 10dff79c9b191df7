"""Models of the Lightspeed R-Series payloads; every quirk of the wire format is absorbed here.

Lightspeed sends every value as a string, "0" for a missing foreign key, a lone child as an object
instead of a one-element list, and an empty relation as "" or not at all (fact sheet §4). Nothing
past these models sees any of that.

They are msgspec Structs: a page of 100 sales decodes from its JSON straight into them in under a
millisecond, where decoding it to dicts and validating those with pydantic took four to five
(docs/performance.md). What msgspec reads itself, it reads: numbers, flags and IDs from their strings,
a lone child or a list, "" for an empty relation, unknown keys ignored. What it cannot is kept as sent,
in a field whose name ends in `_`, and read through the property of the same name without it: a "0"
foreign key (None), a timestamp ("" when there is none), a relation's wrapper (`{"SaleLine": ...}`),
`updatetime` spelled the two ways the docs spell it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal, TypeVar, Union

import msgspec
from msgspec import Struct, field

W = TypeVar("W", bound="LightspeedModel")


class InvalidPayload(ValueError):
    """A payload the models cannot read: `where` (a dotted path, as Lightspeed names the fields) and `problem`."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where, self.problem = where, problem

    @classmethod
    def of(cls, error: msgspec.MsgspecError, payload: Any = None) -> "InvalidPayload":
        """From msgspec's "Invalid decimal string - at `$.SaleLines.SaleLine[0].calcTotal`", with the value sent."""
        problem, _, where = str(error).partition(" - at `$")
        where = where.rstrip("`").lstrip(".")
        if named := re.fullmatch(r"([\w.\[\]]+): (.*)", problem):  # "field: problem, value", from a __post_init__
            return cls(".".join(part for part in (where, named[1]) if part), named[2])
        value = _value_at(payload, where)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            problem += f": {str(value)[:40]!r}"
        return cls(where, problem)


def _value_at(payload: Any, where: str) -> Any:
    """The value at a path such as `SaleLines.SaleLine[0].calcTotal` in a decoded payload, or None."""
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", where):
        if name and isinstance(payload, dict):
            payload = payload.get(name)
        elif index and isinstance(payload, list) and int(index) < len(payload):
            payload = payload[int(index)]
        elif index and isinstance(payload, dict) and index == "0":
            continue  # a lone child read as a one-element list
        else:
            return None
    return payload


def one_or_many(value: Any, key: str) -> list[Any]:
    """`{"SaleLine": {...}}`, `{"SaleLine": [...]}`, `""`, None or absent -> a list of children."""
    if isinstance(value, dict):
        value = value.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    return [value]


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1")


@lru_cache(maxsize=1024)  # one object per distinct text: a sale's timestamps are read several times
def _moment(text: str) -> datetime | None:
    """A Lightspeed timestamp (ISO 8601; "" for none) as an aware UTC datetime."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a timestamp: {text[:40]!r}") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
_ZERO = Decimal(0)


def _finite(where: str, model: Any, names: tuple[str, ...]) -> None:
    for name in names:
        amount = getattr(model, name)
        if not amount.is_finite():
            field_name = msgspec.structs.fields(model)[model.__struct_fields__.index(name)].encode_name
            raise ValueError(f"{where}{field_name}: not a finite number: {str(amount)!r}")


class LightspeedModel(Struct, kw_only=True, frozen=True, gc=False):
    """Read-only, untracked by the garbage collector (nothing here refers back to itself)."""

    @classmethod
    def of(cls: type[W], payload: Any) -> W:
        """A payload as decoded from JSON (a dict), or InvalidPayload."""
        try:
            return msgspec.convert(payload, cls, strict=False)
        except msgspec.ValidationError as error:
            raise InvalidPayload.of(error, payload) from None


class Category(LightspeedModel):
    category_id: int = field(name="categoryID")
    name: str = ""


class Shop(LightspeedModel):
    shop_id: int = field(name="shopID")
    name: str = ""
    time_zone: str = field(name="timeZone", default="")


class Item(LightspeedModel):
    item_id: int = field(name="itemID")
    description: str = ""
    custom_sku: str = field(name="customSku", default="")
    system_sku: str = field(name="systemSku", default="")
    category_id_: int = field(name="categoryID", default=0)

    @property
    def category_id(self) -> int | None:
        return self.category_id_ or None


class PaymentType(LightspeedModel):
    payment_type_id_: int = field(name="paymentTypeID", default=0)
    name: str = ""

    @property
    def payment_type_id(self) -> int | None:
        return self.payment_type_id_ or None


class SalePayment(LightspeedModel):
    sale_payment_id: int = field(name="salePaymentID")
    amount: Decimal = _ZERO
    archived: bool = False
    payment_type_: Union[PaymentType, Literal[""], None] = field(name="PaymentType", default=None)

    @property
    def payment_type(self) -> PaymentType | None:
        kind = self.payment_type_
        return kind if isinstance(kind, PaymentType) else None


class SaleLine(LightspeedModel):
    sale_line_id: int = field(name="saleLineID")
    unit_quantity: Decimal = field(name="unitQuantity", default=_ZERO)
    unit_price: Decimal = field(name="unitPrice", default=_ZERO)
    calc_line_discount: Decimal = field(name="calcLineDiscount", default=_ZERO)
    calc_tax1: Decimal = field(name="calcTax1", default=_ZERO)
    calc_tax2: Decimal = field(name="calcTax2", default=_ZERO)
    calc_total: Decimal = field(name="calcTotal", default=_ZERO)
    item_id_: int = field(name="itemID", default=0)
    parent_sale_line_id_: int = field(name="parentSaleLineID", default=0)
    item_: Union[Item, Literal[""], None] = field(name="Item", default=None)

    @property
    def item_id(self) -> int | None:
        return self.item_id_ or None

    @property
    def parent_sale_line_id(self) -> int | None:
        return self.parent_sale_line_id_ or None

    @property
    def item(self) -> Item | None:
        item = self.item_
        return item if isinstance(item, Item) else None


class ContactEmail(LightspeedModel):
    address: str = ""
    use_type: str = field(name="useType", default="")


class ContactPhone(LightspeedModel):
    number: str = ""
    use_type: str = field(name="useType", default="")


class ContactAddress(LightspeedModel):
    address1: str = ""
    address2: str = ""
    city: str = ""
    state: str = ""
    zip: str = ""
    country: str = ""


# The wrappers of a relation: `"Emails": {"ContactEmail": {...} or [...]}`.
class Emails(LightspeedModel):
    children: Union[list[ContactEmail], ContactEmail] = field(name="ContactEmail", default_factory=list)


class Phones(LightspeedModel):
    children: Union[list[ContactPhone], ContactPhone] = field(name="ContactPhone", default_factory=list)


class Addresses(LightspeedModel):
    children: Union[list[ContactAddress], ContactAddress] = field(name="ContactAddress", default_factory=list)


class SaleLines(LightspeedModel):
    children: Union[list[SaleLine], SaleLine] = field(name="SaleLine", default_factory=list)


class SalePayments(LightspeedModel):
    children: Union[list[SalePayment], SalePayment] = field(name="SalePayment", default_factory=list)


def _children(wrapper: Any) -> list[Any]:
    """A wrapper's children as a list ("" or None: none)."""
    if wrapper is None or wrapper.__class__ is str:
        return []
    children = wrapper.children
    return children if children.__class__ is list else [children]


class Contact(LightspeedModel):
    emails_: Union[Emails, Literal[""], None] = field(name="Emails", default=None)
    phones_: Union[Phones, Literal[""], None] = field(name="Phones", default=None)
    addresses_: Union[Addresses, Literal[""], None] = field(name="Addresses", default=None)

    @property
    def emails(self) -> list[ContactEmail]:
        return _children(self.emails_)

    @property
    def phones(self) -> list[ContactPhone]:
        return _children(self.phones_)

    @property
    def addresses(self) -> list[ContactAddress]:
        return _children(self.addresses_)


class Customer(LightspeedModel):
    customer_id: int = field(name="customerID")
    first_name: str = field(name="firstName", default="")
    last_name: str = field(name="lastName", default="")
    archived: bool = False
    dob_: str = field(name="dob", default="")
    contact_: Union[Contact, Literal[""], None] = field(name="Contact", default=None)

    def __post_init__(self) -> None:
        try:
            _moment(self.dob_)  # a malformed one fails the customer here, not where it is read
        except ValueError as error:
            raise ValueError(f"dob: {error}") from None

    @property
    def dob(self) -> datetime | None:
        return _moment(self.dob_)

    @property
    def contact(self) -> Contact | None:
        contact = self.contact_
        return contact if isinstance(contact, Contact) else None

    @property
    def emails(self) -> list[ContactEmail]:
        contact = self.contact
        return contact.emails if contact else []

    @property
    def phones(self) -> list[ContactPhone]:
        contact = self.contact
        return contact.phones if contact else []

    @property
    def address(self) -> ContactAddress | None:
        """The first address with something in it (Lightspeed sends blank ones too, fact sheet §4.5)."""
        contact = self.contact
        return next((a for a in (contact.addresses if contact else [])
                     if any((a.address1, a.address2, a.city, a.zip, a.country))), None)


class Sale(LightspeedModel):
    sale_id: int = field(name="saleID")
    ticket_number: str = field(name="ticketNumber", default="")
    completed: bool = False
    voided: bool = False
    archived: bool = False
    time_stamp_: str = field(name="timeStamp", default="")
    complete_time_: str = field(name="completeTime", default="")
    # The docs spell the last-update field `updatetime`, older responses `updateTime` (§4.6).
    update_time_: str = field(name="updatetime", default="")
    update_time_older_: str = field(name="updateTime", default="")
    calc_subtotal: Decimal = field(name="calcSubtotal", default=_ZERO)
    calc_discount: Decimal = field(name="calcDiscount", default=_ZERO)
    calc_tax1: Decimal = field(name="calcTax1", default=_ZERO)
    calc_tax2: Decimal = field(name="calcTax2", default=_ZERO)
    calc_total: Decimal = field(name="calcTotal", default=_ZERO)
    customer_id_: int = field(name="customerID", default=0)
    shop_id_: int = field(name="shopID", default=0)
    customer_: Union[Customer, Literal[""], None] = field(name="Customer", default=None)
    lines_: Union[SaleLines, Literal[""], None] = field(name="SaleLines", default=None)
    payments_: Union[SalePayments, Literal[""], None] = field(name="SalePayments", default=None)

    def __post_init__(self) -> None:
        # What msgspec lets through and the sale cannot be written with fails it here, where it is read.
        for name, text in (("timeStamp", self.time_stamp_), ("completeTime", self.complete_time_),
                           ("updatetime", self.update_time_), ("updateTime", self.update_time_older_)):
            try:
                _moment(text)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        _finite("", self, _SALE_AMOUNTS)
        for index, line in enumerate(self.lines):
            _finite(f"SaleLines.SaleLine[{index}].", line, _LINE_AMOUNTS)
        for index, payment in enumerate(self.payments):
            _finite(f"SalePayments.SalePayment[{index}].", payment, ("amount",))

    @property
    def time_stamp(self) -> datetime | None:
        return _moment(self.time_stamp_)

    @property
    def complete_time(self) -> datetime | None:
        return _moment(self.complete_time_)

    @property
    def update_time(self) -> datetime | None:
        return _moment(self.update_time_ or self.update_time_older_)

    @property
    def last_update(self) -> datetime | None:
        """The sale's last change: `updatetime`, else `timeStamp`."""
        return _moment(self.update_time_ or self.update_time_older_ or self.time_stamp_)

    @property
    def customer_id(self) -> int | None:
        return self.customer_id_ or None

    @property
    def shop_id(self) -> int | None:
        return self.shop_id_ or None

    @property
    def customer(self) -> Customer | None:
        customer = self.customer_
        return customer if isinstance(customer, Customer) else None

    @property
    def lines(self) -> list[SaleLine]:
        return _children(self.lines_)

    @property
    def payments(self) -> list[SalePayment]:
        return _children(self.payments_)

    def with_customer(self, customer: Customer | None) -> "Sale":
        return msgspec.structs.replace(self, customer_=customer)


_SALE_AMOUNTS = ("calc_subtotal", "calc_discount", "calc_tax1", "calc_tax2", "calc_total")
_LINE_AMOUNTS = ("unit_quantity", "unit_price", "calc_line_discount", "calc_tax1", "calc_tax2", "calc_total")


class _Links(Struct, gc=False):
    next: str = ""


class _SalePage(Struct, gc=False):
    links: _Links = field(name="@attributes", default_factory=_Links)
    sales: Union[list[Sale], Sale, Literal[""], None] = field(name="Sale", default=None)


_SALE_PAGE = msgspec.json.Decoder(_SalePage, strict=False)


def sale_page(content: bytes) -> tuple[list[Sale], str] | None:
    """A Sale list page read straight into Sales, and its `next` link; None when any sale in it does not read
    (the page is then read as dicts, each sale on its own, so that only the bad one is parked)."""
    try:
        page = _SALE_PAGE.decode(content)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
        return None
    sales = page.sales
    if sales is None or sales.__class__ is str:
        sales = []
    elif sales.__class__ is not list:
        sales = [sales]
    return sales, page.links.next



@dataclass(frozen=True)
class RawSale:
    """A Sale payload's parts as Lightspeed sent them, for the fields a mapping file adds by attribute name:
    the same quirks absorbed as in the models (a lone child, "" for none, the archived flag as a string)."""

    sale: dict[str, Any]
    customer: dict[str, Any] | None  # when loaded with the sale
    payment: dict[str, Any] | None  # the first non-archived SalePayment
    lines: dict[int, dict[str, Any]]  # SaleLine by saleLineID

    @classmethod
    def of(cls, payload: dict[str, Any]) -> "RawSale":
        payments = [p for p in one_or_many(payload.get("SalePayments"), "SalePayment")
                    if isinstance(p, dict) and not _boolean(p.get("archived", False))]
        lines = {}
        for line in one_or_many(payload.get("SaleLines"), "SaleLine"):
            if isinstance(line, dict) and str(line.get("saleLineID", "")).strip().isdigit():
                lines[int(str(line["saleLineID"]).strip())] = line
        return cls(payload, cls.customer_of(payload), payments[0] if payments else None, lines)

    @staticmethod
    def customer_of(payload: dict[str, Any]) -> dict[str, Any] | None:
        """The Customer loaded with the sale ("" or absent when there is none)."""
        customer = payload.get("Customer")
        return customer if isinstance(customer, dict) else None


def parse_sale(payload: dict[str, Any]) -> Sale:
    return Sale.of(payload)
