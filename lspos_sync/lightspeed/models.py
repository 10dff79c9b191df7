"""Models of the Lightspeed R-Series payloads; every quirk of the wire format is absorbed here.

Lightspeed sends every value as a string, "0" for a missing foreign key, a lone child as an object
instead of a one-element list, and an empty relation as "" or not at all (fact sheet §4). These pydantic
models read all of that into what a sale means: numbers, flags, None for no key, lists of children, aware
UTC datetimes, None for a relation not sent. Nothing past them sees the wire format.

They are pydantic dataclasses with slots rather than `BaseModel`s: the same validation, but an instance
carries no `__dict__` and no fields-set record, so a sale and its children take a third of the memory
(4.4 MB per 1,000 sales against 13.9 MB, docs/performance.md), which is what a run holds while it reads ahead.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime, timezone
from decimal import Decimal
from functools import cache
from typing import Annotated, Any, TypeVar, Union

from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Field, PlainValidator, TypeAdapter,
                      ValidationError, model_validator)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

# The shapes without a model, re-exported: a reader of sales finds every one of them here.
from lspos_sync.lightspeed.wire import InvalidPayload, RawSale, _listed, one_or_many  # noqa: F401

W = TypeVar("W", bound="LightspeedModel")


_ZERO = Decimal(0)
# No Salesforce number field holds more digits than 18 (Currency(16, 2) holds 14 before the point): an amount with
# more before the point cannot be written anywhere, and one past 26 would not even round to cents in Decimal's
# default context (28 digits).
_AMOUNT_DIGITS = 18


def _amount(value: Decimal) -> Decimal:
    if value.adjusted() >= _AMOUNT_DIGITS:
        raise PydanticCustomError("amount_range", "more than 18 digits before the point, more than Salesforce holds")
    # "-0" reads as 0 (as it always has: the content hash sees a zero's sign); "-0.00" keeps its sign.
    return _ZERO if not value and value.is_signed() and value.as_tuple().exponent == 0 else value


def _flag(value: Any) -> bool:
    """`true`/`false` in any case, `1`/`0`, or a JSON boolean; nothing else is guessed at."""
    if value is True or value is False:
        return value
    text = value.lower() if isinstance(value, str) else value
    if text in ("true", "1", 1):
        return True
    if text in ("false", "0", 0):
        return False
    raise PydanticCustomError("flag", "Expected `bool`, got `{kind}`", {"kind": type(value).__name__})


def says_open(payload: dict[str, Any]) -> bool:
    """Whether a sale's payload, read or not, says the sale is open: `completed` false, or absent, as `Sale` reads
    it; a flag that does not read says nothing."""
    try:
        return not _flag(payload.get("completed", False))
    except PydanticCustomError:
        return False


def _no_key(key: int) -> int | None:
    return key or None


def _timestamp(value: Any) -> datetime | None:
    """A Lightspeed timestamp (ISO 8601; "" for none) as an aware UTC datetime."""
    if value == "":
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except (AttributeError, ValueError):
        raise PydanticCustomError("timestamp", "not a timestamp") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _relation(child: str) -> BeforeValidator:
    """A relation's children, sent as `{"Child": {...} or [...]}`, or "" (or nothing) for none."""
    def children(value: Any) -> list[Any]:
        if value is None or value == "":
            return []
        if not isinstance(value, dict):
            raise PydanticCustomError("relation", 'Expected an object or "", got `{kind}`',
                                      {"kind": type(value).__name__})
        return _listed(value.get(child))
    return BeforeValidator(children)


# The field types of the wire format.
Flag = Annotated[bool, PlainValidator(_flag)]
Amount = Annotated[Decimal, AfterValidator(_amount)]
Moment = Annotated[Union[datetime, None], PlainValidator(_timestamp)]  # "": none
Key = Annotated[int, AfterValidator(_no_key)]  # an ID, None for "0" (no key)
M = TypeVar("M")
Relation = Annotated[Union[M, None], BeforeValidator(lambda value: None if value == "" else value)]  # "": none


class LightspeedModel:
    """Read-only; built from a payload by its Lightspeed names, or in code by the Python ones. Each model's
    validator is built when it first reads something: a run that reads no sale does not pay for it."""

    __slots__ = ()

    @classmethod
    def of(cls: type[W], payload: Any) -> W:
        """A payload as decoded from JSON (a dict), or InvalidPayload."""
        try:
            return _adapter(cls).validate_python(payload)
        except ValidationError as error:
            raise InvalidPayload.of(error, payload) from None

    def but(self: W, **changes: Any) -> W:
        """A copy with some fields given other values that are already read (not wire values, so not validated
        again: `dataclasses.replace` would read them as a payload)."""
        copy = object.__new__(type(self))
        for name in (f.name for f in fields(self)):  # type: ignore[arg-type]
            object.__setattr__(copy, name, changes.pop(name) if name in changes else getattr(self, name))
        if changes:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(changes)}")
        return copy


_CONFIG = ConfigDict(validate_by_name=True, validate_by_alias=True, defer_build=True)


@cache
def _adapter(model: type[W]) -> TypeAdapter[W]:
    """The model's validator, built the first time one of its payloads is read."""
    return TypeAdapter(model)


def model(cls: type[W]) -> type[W]:
    """A Lightspeed model: a frozen pydantic dataclass with slots."""
    return pydantic_dataclass(frozen=True, slots=True, config=_CONFIG)(cls)


@model
class Category(LightspeedModel):
    category_id: int = Field(alias="categoryID")
    name: str = ""


@model
class Shop(LightspeedModel):
    shop_id: int = Field(alias="shopID")
    name: str = ""
    time_zone: str = Field(default="", alias="timeZone")


@model
class Item(LightspeedModel):
    item_id: int = Field(alias="itemID")
    description: str = ""
    custom_sku: str = Field(default="", alias="customSku")
    system_sku: str = Field(default="", alias="systemSku")
    category_id: Key = Field(default=None, alias="categoryID")


@model
class PaymentType(LightspeedModel):
    payment_type_id: Key = Field(default=None, alias="paymentTypeID")
    name: str = ""


@model
class SalePayment(LightspeedModel):
    sale_payment_id: int = Field(alias="salePaymentID")
    amount: Amount = _ZERO
    archived: Flag = False
    payment_type: Relation[PaymentType] = Field(default=None, alias="PaymentType")


@model
class SaleLine(LightspeedModel):
    sale_line_id: int = Field(alias="saleLineID")
    unit_quantity: Amount = Field(default=_ZERO, alias="unitQuantity")
    unit_price: Amount = Field(default=_ZERO, alias="unitPrice")
    calc_line_discount: Amount = Field(default=_ZERO, alias="calcLineDiscount")
    calc_tax1: Amount = Field(default=_ZERO, alias="calcTax1")
    calc_tax2: Amount = Field(default=_ZERO, alias="calcTax2")
    calc_total: Amount = Field(default=_ZERO, alias="calcTotal")
    item_id: Key = Field(default=None, alias="itemID")
    parent_sale_line_id: Key = Field(default=None, alias="parentSaleLineID")
    item: Relation[Item] = Field(default=None, alias="Item")


@model
class ContactEmail(LightspeedModel):
    address: str = ""
    use_type: str = Field(default="", alias="useType")


@model
class ContactPhone(LightspeedModel):
    number: str = ""
    use_type: str = Field(default="", alias="useType")


@model
class ContactAddress(LightspeedModel):
    address1: str = ""
    address2: str = ""
    city: str = ""
    state: str = ""
    zip: str = ""
    country: str = ""


@model
class Contact(LightspeedModel):
    emails: Annotated[list[ContactEmail], _relation("ContactEmail")] = Field(default_factory=list, alias="Emails")
    phones: Annotated[list[ContactPhone], _relation("ContactPhone")] = Field(default_factory=list, alias="Phones")
    addresses: Annotated[list[ContactAddress], _relation("ContactAddress")] = Field(default_factory=list,
                                                                                   alias="Addresses")
    time_stamp: Moment = Field(default=None, alias="timeStamp")


@model
class Customer(LightspeedModel):
    customer_id: int = Field(alias="customerID")
    first_name: str = Field(default="", alias="firstName")
    last_name: str = Field(default="", alias="lastName")
    dob: Moment = None
    archived: Flag = False  # an archived customer is still read: its sales stay linked to it
    contact: Relation[Contact] = Field(default=None, alias="Contact")
    time_stamp: Moment = Field(default=None, alias="timeStamp")

    @property
    def last_change(self) -> datetime | None:
        """The later of the Customer's `timeStamp` and its Contact's (an edit of the email, phones or address may
        move only the Contact's, fact sheet §2); None when neither came."""
        moments = [m for m in (self.time_stamp, self.contact.time_stamp if self.contact else None) if m is not None]
        return max(moments, default=None)

    @property
    def emails(self) -> list[ContactEmail]:
        return self.contact.emails if self.contact else []

    @property
    def phones(self) -> list[ContactPhone]:
        return self.contact.phones if self.contact else []

    @property
    def address(self) -> ContactAddress | None:
        """The first address with something in it (Lightspeed sends blank ones too, fact sheet §4.5)."""
        return next((a for a in (self.contact.addresses if self.contact else [])
                     if any((a.address1, a.address2, a.city, a.zip, a.country))), None)


@model
class Sale(LightspeedModel):
    sale_id: int = Field(alias="saleID")
    ticket_number: str = Field(default="", alias="ticketNumber")
    completed: Flag = False
    voided: Flag = False
    archived: Flag = False
    time_stamp: Moment = Field(default=None, alias="timeStamp")
    complete_time: Moment = Field(default=None, alias="completeTime")
    # The docs spell the last-update field `updatetime`, older responses `updateTime` (§4.6): see update_time.
    updatetime: Moment = None
    update_time_older: Moment = Field(default=None, alias="updateTime")
    calc_subtotal: Amount = Field(default=_ZERO, alias="calcSubtotal")
    calc_discount: Amount = Field(default=_ZERO, alias="calcDiscount")
    calc_tax1: Amount = Field(default=_ZERO, alias="calcTax1")
    calc_tax2: Amount = Field(default=_ZERO, alias="calcTax2")
    calc_total: Amount = Field(default=_ZERO, alias="calcTotal")
    customer_id: Key = Field(default=None, alias="customerID")
    shop_id: Key = Field(default=None, alias="shopID")
    customer: Relation[Customer] = Field(default=None, alias="Customer")
    lines: Annotated[list[SaleLine], _relation("SaleLine")] = Field(default_factory=list, alias="SaleLines")
    payments: Annotated[list[SalePayment], _relation("SalePayment")] = Field(default_factory=list,
                                                                            alias="SalePayments")

    @model_validator(mode="before")
    @classmethod
    def _update_time_in_any_case(cls, payload: Any) -> Any:
        """The fact sheet advises reading the update time's key whatever its case (§4.6): a spelling other than the
        two known ones is read as `updatetime`. A payload with one of the two costs two lookups."""
        if isinstance(payload, dict) and "updatetime" not in payload and "updateTime" not in payload:
            spelled = next((key for key in payload if isinstance(key, str) and key.lower() == "updatetime"), None)
            if spelled is not None:
                return {**payload, "updatetime": payload[spelled]}
        return payload

    @property
    def update_time(self) -> datetime | None:
        return self.updatetime or self.update_time_older

    @property
    def last_update(self) -> datetime | None:
        """The sale's last change: `updatetime`, else `timeStamp`."""
        return self.updatetime or self.update_time_older or self.time_stamp

    def with_customer(self, customer: Customer | None) -> "Sale":
        return self.but(customer=customer)


_SALES = TypeAdapter(list[Sale], config=ConfigDict(defer_build=True))


def sale_page(page: dict[str, Any]) -> list[Sale] | None:
    """The Sales of a Sale list page (as decoded from its JSON), read in one pass; None when any of them does not
    read (the page's payloads are then read each on its own, so that only the bad one is parked)."""
    payloads = one_or_many(page, "Sale")
    if not payloads:
        return []
    try:
        return _SALES.validate_python(payloads)
    except ValidationError:
        return None
