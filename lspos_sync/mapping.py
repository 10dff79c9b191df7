"""Pure mapping: Lightspeed models in, Salesforce record dicts out (contract §3). No I/O.

This is where an admin reads how each field is filled. Money stays `Decimal` until the record is
built, sums are taken first, and only then is each value rounded half-up to 2 decimals.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from lspos_sync.customers import mobile_phone, normalise_email, other_phone, primary_email

if TYPE_CHECKING:
    from lspos_sync.lightspeed.models import Category, Customer, Sale, Shop

ACCOUNT = "Account"
TRANSACTION = "Sales_Transaction__c"
LINE = "Sales_Line_Item__c"

CUSTOMER_KEY = "LS_Customer_ID__c"
SALE_KEY = "LS_Sale_ID__c"
LINE_KEY = "LS_Sale_Line_ID__c"

# Field lengths of the shipped metadata (docs/salesforce) and of the standard Account fields.
_LENGTHS = {
    "FirstName": 40, "LastName": 80, "Ticket_Number__c": 40, "Shop_Name__c": 80,
    "Payment_Methods__c": 255, "SKU__c": 80, "Product_Name__c": 255, "Category__c": 80,
    "PersonMobilePhone": 40, "Phone": 40, "PersonMailingStreet": 255, "PersonMailingCity": 40,
    "PersonMailingPostalCode": 20, "PersonMailingCountry": 80,
}

_CENT = Decimal("0.01")


def key(account_id: str, record_id: int | str) -> str:
    """External IDs are `<accountID>-<id>` so several Lightspeed accounts can share one org."""
    return f"{account_id}-{record_id}"


def money(value: Decimal) -> float:
    """Round half-up (ties away from zero) to 2 decimals, at the Salesforce boundary only."""
    return float(value.quantize(_CENT, rounding=ROUND_HALF_UP))


def salesforce_datetime(moment: datetime | None) -> str | None:
    """`2026-03-01T14:05:09Z`: UTC, whole seconds."""
    if moment is None:
        return None
    utc = moment.astimezone(timezone.utc) if moment.utcoffset() else moment
    return utc.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def clean_text(value: str | None, field: str) -> str | None:
    """Control and format characters dropped (other whitespace becomes a space), trimmed, cut to the field's
    length; None when empty."""
    if value is None:
        return None
    text = value
    if not text.isprintable():  # the common case skips the character loop
        text = "".join(ch if ch.isprintable() else " " if ch.isspace() else "" for ch in text)
    text = text.strip()
    limit = _LENGTHS.get(field)
    if limit is not None:
        text = text[:limit].rstrip()
    return text or None


def sale_status(sale: Sale) -> str:
    if sale.voided:
        return "Voided"
    if sale.calc_total < 0:
        return "Refund"
    return "Completed"


def transaction_record(sale: Sale, account_id: str, shops: dict[int, Shop]) -> dict[str, Any]:
    """The Sales_Transaction__c fields that come from the sale itself (the customer link is added apart)."""
    payments = [p for p in sale.payments if not p.archived]
    methods: list[str] = []
    for payment in payments:
        name = payment.payment_type.name.strip() if payment.payment_type else ""
        if name and name not in methods:
            methods.append(name)
    shop = shops.get(sale.shop_id) if sale.shop_id is not None else None
    return {
        SALE_KEY: key(account_id, sale.sale_id),
        "Ticket_Number__c": clean_text(sale.ticket_number, "Ticket_Number__c"),
        "Transaction_Date__c": salesforce_datetime(sale.complete_time),
        "Status__c": sale_status(sale),
        "Shop_Name__c": clean_text(shop.name, "Shop_Name__c") if shop else None,
        "Subtotal__c": money(sale.calc_subtotal),
        "Discount__c": money(sale.calc_discount),
        "Tax__c": money(sale.calc_tax1 + sale.calc_tax2),
        "Total__c": money(sale.calc_total),
        "Amount_Paid__c": money(sum((p.amount for p in payments), Decimal(0))),
        "Payment_Methods__c": clean_text(", ".join(methods), "Payment_Methods__c"),
        "LS_Updated_At__c": salesforce_datetime(sale.last_update),
    }


def line_records(sale: Sale, account_id: str, categories: dict[int, Category]) -> list[dict[str, Any]]:
    """One Sales_Line_Item__c per SaleLine, each pointing at its transaction by external ID."""
    records = []
    sale_key = key(account_id, sale.sale_id)
    for line in sale.lines:
        item = line.item
        category = categories.get(item.category_id) if item and item.category_id is not None else None
        records.append({
            LINE_KEY: key(account_id, line.sale_line_id),
            "Sales_Transaction__r": {SALE_KEY: sale_key},
            "SKU__c": clean_text((item.custom_sku.strip() or item.system_sku) if item else None, "SKU__c"),
            "Product_Name__c": clean_text(item.description if item else None, "Product_Name__c"),
            "Category__c": clean_text(category.name if category else None, "Category__c"),
            "Quantity__c": float(line.unit_quantity),
            "Unit_Price__c": money(line.unit_price),
            "Discount__c": money(line.calc_line_discount),
            "Tax__c": money(line.calc_tax1 + line.calc_tax2),
            "Line_Total__c": money(line.calc_total),
        })
    return records


def current_lines(transaction: dict[str, Any], lines: list[dict[str, Any]]) -> set[str] | None:
    """The keys of the lines a sale has in Lightspeed now, to which its lines in Salesforce are cut when it is written
    again; None for a voided sale, whose lines in Salesforce are never deleted (contract §3: "A voided sale keeps its
    lines", whether or not Lightspeed still lists them once the sale is voided)."""
    if transaction["Status__c"] == "Voided":
        return None
    return {line[LINE_KEY] for line in lines}


def gaps(sale: Sale, account_id: str, shops: dict[int, Shop], categories: dict[int, Category]) -> list[dict[str, Any]]:
    """What the sale refers to and Lightspeed did not send (deleted, or otherwise absent), with the fields left
    empty for it: the sale is written with what is known, and the run names it (contract §4, "Data Lightspeed
    could not explain"). `line` is the line's key, or None for the sale itself."""
    found = []

    def gap(line: str | None, record: str, *left_empty: str) -> None:
        found.append({"line": line, "record": record, "left_empty": list(left_empty)})

    if sale.completed and sale.complete_time is None:  # the recorded 2016 sales have none
        gap(None, "completeTime", "Transaction_Date__c")
    if sale.shop_id is not None and sale.shop_id not in shops:
        gap(None, f"Shop {sale.shop_id}", "Shop_Name__c")
    if sale.customer_id is not None and sale.customer is None:
        gap(None, f"Customer {sale.customer_id}", "Account__c")
    for payment in sale.payments:
        if not payment.archived and payment.payment_type is None:
            gap(None, f"PaymentType of SalePayment {payment.sale_payment_id}", "Payment_Methods__c")
    for line in sale.lines:
        item = line.item
        if item is None and line.item_id is not None:
            gap(key(account_id, line.sale_line_id), f"Item {line.item_id}", "SKU__c", "Product_Name__c", "Category__c")
        elif item is not None and item.category_id is not None and item.category_id not in categories:
            gap(key(account_id, line.sale_line_id), f"Category {item.category_id}", "Category__c")
    return found


def person_account_record(customer: Customer, account_id: str, record_type_id: str | None,
                          profile: dict[str, Any]) -> dict[str, Any]:
    """A new Person Account for a customer that matched nobody (upserted on LS_Customer_ID__c), with the
    customer's profile (see `profile_fields`).

    LastName is required on Person Accounts: without one, the first name moves to LastName (so the
    Name does not read "Ana Ana"), then the email, then "Lightspeed customer <id>".
    """
    first = clean_text(customer.first_name, "FirstName")
    last = clean_text(customer.last_name, "LastName")
    if not last:
        fallback = first or profile.get("PersonEmail") or f"Lightspeed customer {customer.customer_id}"
        first, last = None, clean_text(fallback, "LastName")
    record: dict[str, Any] = {
        "attributes": {"type": ACCOUNT},
        CUSTOMER_KEY: key(account_id, customer.customer_id),
        "FirstName": first,
        "LastName": last,
    }
    if record_type_id:
        record["RecordTypeId"] = record_type_id
    return {**record, **profile}


# The loyalty fields LSPOS_ROLLUPS keeps on Account (rollups.py computes them).
ROLLUP_FIELDS = ("Lifetime_Spend__c", "Purchase_Count__c", "First_Purchase_Date__c", "Last_Purchase_Date__c")

# The profile fields enrichment may fill on a matched account (LSPOS_ENRICH_PROFILES), in this order.
ENRICHABLE = ("PersonEmail", "PersonMobilePhone", "Phone", "PersonBirthdate", "PersonMailingStreet",
              "PersonMailingCity", "PersonMailingPostalCode", "PersonMailingCountry")


def profile_fields(customer: Customer, enrich: bool) -> dict[str, Any]:
    """What the till knows of the client, as Person Account fields, leaving out what it does not know.

    Email and phones always (as typed; an invalid email is left out); with `enrich`, also the birthdate
    (`calendar_day`) and the first address that has something in it.
    """
    address = primary_email(customer)
    fields: dict[str, Any] = {
        "PersonEmail": address if normalise_email(address) else None,
        "PersonMobilePhone": clean_text(mobile_phone(customer), "PersonMobilePhone"),
        "Phone": clean_text(other_phone(customer), "Phone"),
    }
    if enrich:
        postal = customer.address
        street = ", ".join(part.strip() for part in (postal.address1, postal.address2) if part.strip()) if postal else ""
        fields.update({
            "PersonBirthdate": calendar_day(customer.dob),
            "PersonMailingStreet": clean_text(street, "PersonMailingStreet"),
            "PersonMailingCity": clean_text(postal.city, "PersonMailingCity") if postal else None,
            "PersonMailingPostalCode": clean_text(postal.zip, "PersonMailingPostalCode") if postal else None,
            "PersonMailingCountry": clean_text(postal.country, "PersonMailingCountry") if postal else None,
        })
    return {name: value for name, value in fields.items() if value}


def calendar_day(moment: datetime | None) -> str | None:
    """The day of a date-only field (a `dob`), which Lightspeed sends as the local midnight of a zone it does
    not name, in UTC: the day of the nearest UTC midnight, the instant plus 12 hours (contract §4, "Dates
    without a time"). Exact for a day entered anywhere from UTC-12 to UTC+12, whatever shop the sale was in;
    the shop's zone says nothing of where the day was typed."""
    if moment is None:
        return None
    return (moment.astimezone(timezone.utc) + _HALF_A_DAY).date().isoformat()


_HALF_A_DAY = timedelta(hours=12)


def content_hash(transaction: dict[str, Any], lines: list[dict[str, Any]], salt: str = "") -> str:
    """A fingerprint of what the sale writes, so that an unchanged sale re-read costs no write; `salt`
    changes it when where it is written changes (a new mapping file). The JSON is written as it always has
    been (sorted keys, no spaces, non-ASCII escaped): the fingerprints in the state store stay valid."""
    document = [transaction, lines, salt] if salt else [transaction, lines]
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(payload).hexdigest()[:32]
