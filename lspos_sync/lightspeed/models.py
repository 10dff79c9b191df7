"""Pydantic models of the Lightspeed R-Series payloads; every quirk of the wire format is absorbed here.

Lightspeed sends every value as a string, "0" for a missing foreign key, a lone child as an object
instead of a one-element list, and an empty relation as "" or not at all (fact sheet §4). Nothing
past these models sees any of that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, model_validator


def one_or_many(value: Any, key: str) -> list[Any]:
    """`{"SaleLine": {...}}`, `{"SaleLine": [...]}`, `""`, None or absent -> a list of children."""
    if isinstance(value, dict):
        value = value.get(key)
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    return [value]


def _decimal(value: Any) -> Decimal:
    if value is None or value == "":
        return _ZERO
    text = value if value.__class__ is str else str(value)
    number = _DECIMALS.get(text)
    if number is not None:
        return number
    try:
        number = Decimal(text)  # trims whitespace itself
    except InvalidOperation:
        raise ValueError(f"not a number: {str(value)[:40]!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite number: {str(value)[:40]!r}")
    if len(_DECIMALS) < 4096:
        _DECIMALS[text] = number
    return number


# Decimals cannot change, and a till's amounts repeat ("0", its prices, their taxes): one object per distinct
# text, for the first 4,096 texts, instead of one per field (24 a sale).
_ZERO = Decimal(0)
_DECIMALS: dict[str, Decimal] = {}


def _foreign_key(value: Any) -> int | None:
    if value is None or value == "" or str(value).strip() == "0":
        return None
    return int(str(value).strip())


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1")


def _timestamp(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        moment = datetime.fromisoformat(str(value).strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


Money = Annotated[Decimal, PlainValidator(_decimal)]
ForeignKey = Annotated[int | None, PlainValidator(_foreign_key)]
Flag = Annotated[bool, PlainValidator(_boolean)]
Timestamp = Annotated[datetime | None, PlainValidator(_timestamp)]
Text = Annotated[str, PlainValidator(_text)]


class LightspeedModel(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    def model_post_init(self, context: Any) -> None:
        # pydantic gives every instance a set of the fields present in its row, as large as its values; rows of
        # one kind nearly always have the same, so those instances share one (model_copy copies it to update it).
        fields = self.__pydantic_fields_set__
        shared = _FIELD_SETS.setdefault(type(self), fields)
        if shared is not fields and shared == fields:
            object.__setattr__(self, "__pydantic_fields_set__", shared)


_FIELD_SETS: dict[type, set[str]] = {}  # model -> the fields set of its first instance


def _children(child: str) -> BeforeValidator:
    """A before-validator that turns a relation wrapper (`{"SaleLine": ...}`, "", absent) into a list."""

    def normalise(value: Any) -> list[Any]:
        return one_or_many(value, child)

    return BeforeValidator(normalise)


class Category(LightspeedModel):
    category_id: int = Field(alias="categoryID")
    name: Text = ""


class Shop(LightspeedModel):
    shop_id: int = Field(alias="shopID")
    name: Text = ""
    time_zone: Text = Field("", alias="timeZone")


class Item(LightspeedModel):
    item_id: int = Field(alias="itemID")
    description: Text = ""
    custom_sku: Text = Field("", alias="customSku")
    system_sku: Text = Field("", alias="systemSku")
    category_id: ForeignKey = Field(None, alias="categoryID")


class PaymentType(LightspeedModel):
    payment_type_id: ForeignKey = Field(None, alias="paymentTypeID")
    name: Text = ""


class SalePayment(LightspeedModel):
    sale_payment_id: int = Field(alias="salePaymentID")
    amount: Money = Decimal(0)
    archived: Flag = False
    payment_type: PaymentType | None = Field(None, alias="PaymentType")

    @model_validator(mode="before")
    @classmethod
    def _blank_payment_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("PaymentType") == "":
            data = {**data, "PaymentType": None}
        return data


class SaleLine(LightspeedModel):
    sale_line_id: int = Field(alias="saleLineID")
    unit_quantity: Money = Field(Decimal(0), alias="unitQuantity")
    unit_price: Money = Field(Decimal(0), alias="unitPrice")
    calc_line_discount: Money = Field(Decimal(0), alias="calcLineDiscount")
    calc_tax1: Money = Field(Decimal(0), alias="calcTax1")
    calc_tax2: Money = Field(Decimal(0), alias="calcTax2")
    calc_total: Money = Field(Decimal(0), alias="calcTotal")
    item_id: ForeignKey = Field(None, alias="itemID")
    parent_sale_line_id: ForeignKey = Field(None, alias="parentSaleLineID")
    item: Item | None = Field(None, alias="Item")

    @model_validator(mode="before")
    @classmethod
    def _blank_item(cls, data: Any) -> Any:
        if isinstance(data, dict) and not isinstance(data.get("Item", {}), dict):
            data = {**data, "Item": None}
        return data


class ContactEmail(LightspeedModel):
    address: Text = ""
    use_type: Text = Field("", alias="useType")


class ContactPhone(LightspeedModel):
    number: Text = ""
    use_type: Text = Field("", alias="useType")


class ContactAddress(LightspeedModel):
    address1: Text = ""
    address2: Text = ""
    city: Text = ""
    state: Text = ""
    zip: Text = ""
    country: Text = ""


class Contact(LightspeedModel):
    emails: Annotated[list[ContactEmail], _children("ContactEmail")] = Field(
        default_factory=list, alias="Emails")
    phones: Annotated[list[ContactPhone], _children("ContactPhone")] = Field(
        default_factory=list, alias="Phones")
    addresses: Annotated[list[ContactAddress], _children("ContactAddress")] = Field(
        default_factory=list, alias="Addresses")


class Customer(LightspeedModel):
    customer_id: int = Field(alias="customerID")
    first_name: Text = Field("", alias="firstName")
    last_name: Text = Field("", alias="lastName")
    dob: Timestamp = None
    contact: Contact | None = Field(None, alias="Contact")

    @model_validator(mode="before")
    @classmethod
    def _blank_contact(cls, data: Any) -> Any:
        if isinstance(data, dict) and not isinstance(data.get("Contact", {}), dict):
            data = {**data, "Contact": None}
        return data

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


class Sale(LightspeedModel):
    sale_id: int = Field(alias="saleID")
    ticket_number: Text = Field("", alias="ticketNumber")
    completed: Flag = False
    voided: Flag = False
    archived: Flag = False
    time_stamp: Timestamp = Field(None, alias="timeStamp")
    complete_time: Timestamp = Field(None, alias="completeTime")
    update_time: Timestamp = Field(None, alias="updatetime")
    calc_subtotal: Money = Field(Decimal(0), alias="calcSubtotal")
    calc_discount: Money = Field(Decimal(0), alias="calcDiscount")
    calc_tax1: Money = Field(Decimal(0), alias="calcTax1")
    calc_tax2: Money = Field(Decimal(0), alias="calcTax2")
    calc_total: Money = Field(Decimal(0), alias="calcTotal")
    customer_id: ForeignKey = Field(None, alias="customerID")
    shop_id: ForeignKey = Field(None, alias="shopID")
    customer: Customer | None = Field(None, alias="Customer")
    lines: Annotated[list[SaleLine], _children("SaleLine")] = Field(
        default_factory=list, alias="SaleLines")
    payments: Annotated[list[SalePayment], _children("SalePayment")] = Field(
        default_factory=list, alias="SalePayments")

    @model_validator(mode="before")
    @classmethod
    def _spellings(cls, data: Any) -> Any:
        # The docs spell the last-update field `updatetime`, older responses `updateTime` (§4.6).
        if isinstance(data, dict) and "updatetime" not in data:
            for key in data:
                if key.lower() == "updatetime":
                    data = {**data, "updatetime": data[key]}
                    break
        if isinstance(data, dict) and not isinstance(data.get("Customer", {}), dict):
            data = {**data, "Customer": None}
        return data

    @property
    def last_update(self) -> datetime | None:
        """The sale's last change: `updatetime`, else `timeStamp`."""
        return self.update_time or self.time_stamp


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
    return Sale.model_validate(payload)
