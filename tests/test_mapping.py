"""Mapping is pure: Lightspeed models in, Salesforce records out, exactly as contract §3 says."""

import hashlib
import json
import math
from datetime import date, datetime, time, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from lspos_sync import mapping
from lspos_sync.lightspeed.models import Category, Customer, Item, Sale, Shop, one_or_many

SAMPLES = Path(__file__).resolve().parent / "samples"
SHOPS = {1: Shop(shop_id=1, name="West Bolduc")}


def sample_sale(name: str) -> Sale:
    return Sale.of(one_or_many(json.loads((SAMPLES / name).read_text()), "Sale")[0])


def test_transaction_fields_from_a_completed_sale():
    record = mapping.transaction_record(sample_sale("docs_v3_sale_277_completed_with_relations.json"), "182255", SHOPS)
    assert record == {
        "LS_Sale_ID__c": "182255-277", "Ticket_Number__c": "220000000277",
        "Transaction_Date__c": "2016-11-10T13:51:54Z", "Status__c": "Completed", "Shop_Name__c": "West Bolduc",
        "Subtotal__c": 29.99, "Discount__c": 0.0, "Tax__c": 4.49, "Total__c": 34.48, "Amount_Paid__c": 34.48,
        "Payment_Methods__c": "Cash", "LS_Updated_At__c": "2016-11-10T13:51:54Z",
    }


def test_refund_sale_has_refund_status_and_negative_quantities():
    sale = sample_sale("docs_v3_sale_282_full_refund.json")
    assert mapping.transaction_record(sale, "1", SHOPS)["Status__c"] == "Refund"
    assert all(line["Quantity__c"] < 0 for line in mapping.line_records(sale, "1", {}))


def test_voided_wins_over_refund_and_keeps_lines():
    sale = sample_sale("docs_v3_sale_277_completed_with_relations.json").but(voided=True)
    assert mapping.transaction_record(sale, "1", SHOPS)["Status__c"] == "Voided"
    assert len(mapping.line_records(sale, "1", {})) == 2


def test_line_tax_is_summed_before_rounding_half_up():
    sale = sample_sale("docs_v3_sale_277_completed_with_relations.json")
    first = mapping.line_records(sale, "182255", {})[0]
    # 0.4995 + 0.9965025 = 1.4960025 -> 1.50 ; calcTotal 11.4860025 -> 11.49
    assert first["Tax__c"] == 1.50 and first["Line_Total__c"] == 11.49
    assert first["LS_Sale_Line_ID__c"] == "182255-269"
    assert first["Sales_Transaction__r"] == {"LS_Sale_ID__c": "182255-277"}


@pytest.mark.parametrize("value, rounded", [
    ("0.005", 0.01), ("-0.005", -0.01), ("2.675", 2.68), ("1.004999", 1.0), ("-34.485", -34.49)])
def test_money_rounds_half_up_away_from_zero(value, rounded):
    assert mapping.money(Decimal(value)) == rounded


def test_a_negative_zero_amount_rounds_the_same_whatever_was_rounded_before():
    # -0 equals 0, yet its sign is in the sale's content hash: it must not depend on what was rounded before.
    signs = []
    for order in (("0", "-0"), ("-0", "0")):
        signs.append([math.copysign(1, mapping.money(Decimal(text))) for text in order])
    assert signs == [[1, -1], [-1, 1]]


def test_line_takes_custom_sku_then_system_sku_and_category_name():
    item = Item(item_id=5, description="Silk scarf", custom_sku="", system_sku="210000000005", category_id=3)
    sale = Sale.of({"saleID": "9", "SaleLines": {"SaleLine": {
        "saleLineID": "90", "unitQuantity": "2", "unitPrice": "10", "calcTotal": "20", "itemID": "5"}}})
    sale = sale.but(lines=[sale.lines[0].but(item=item)])
    line = mapping.line_records(sale, "1", {3: Category(category_id=3, name="Accessories")})[0]
    assert (line["SKU__c"], line["Product_Name__c"], line["Category__c"]) == ("210000000005", "Silk scarf", "Accessories")


def test_line_without_item_has_empty_product_fields():
    sale = Sale.of({"saleID": "9", "SaleLines": {"SaleLine": {"saleLineID": "90", "itemID": "0"}}})
    line = mapping.line_records(sale, "1", {})[0]
    assert line["SKU__c"] is None and line["Product_Name__c"] is None and line["Category__c"] is None


def test_payment_methods_distinct_in_payment_order_without_archived():
    sale = Sale.of({"saleID": "9", "calcTotal": "100", "SalePayments": {"SalePayment": [
        {"salePaymentID": "1", "amount": "30", "PaymentType": {"name": "Visa"}},
        {"salePaymentID": "2", "amount": "50", "archived": "true", "PaymentType": {"name": "Cash"}},
        {"salePaymentID": "3", "amount": "20", "PaymentType": {"name": "Gift Card"}},
        {"salePaymentID": "4", "amount": "0.004", "PaymentType": {"name": "Visa"}}]}})
    record = mapping.transaction_record(sale, "1", {})
    assert record["Payment_Methods__c"] == "Visa, Gift Card"
    assert record["Amount_Paid__c"] == 50.0


def test_no_payments_means_zero_paid_and_no_methods():
    record = mapping.transaction_record(Sale.of({"saleID": "9"}), "1", {})
    assert record["Amount_Paid__c"] == 0.0 and record["Payment_Methods__c"] is None


def test_update_time_falls_back_to_time_stamp():
    sale = Sale.of({"saleID": "9", "timeStamp": "2026-03-01T10:00:00+00:00"})
    assert mapping.transaction_record(sale, "1", {})["LS_Updated_At__c"] == "2026-03-01T10:00:00Z"


@pytest.mark.parametrize("first, last, expected", [
    ("Ana", "Lima", ("Ana", "Lima")),
    ("Ana", "", (None, "Ana")),
    ("", "", (None, "Ana@Example.com")),
])
def test_person_account_never_has_an_empty_last_name(first, last, expected):
    customer = Customer.of({"customerID": "7", "firstName": first, "lastName": last, "Contact": {
        "Emails": {"ContactEmail": {"address": "Ana@Example.com ", "useType": "Primary"}},
        "Phones": {"ContactPhone": [{"number": "(415) 555-0134", "useType": "Mobile"},
                                    {"number": "415 555 0199", "useType": "Home"}]}}})
    record = mapping.person_account_record(customer, "182255", "012000000000001",
                                           mapping.profile_fields(customer, enrich=False))
    assert (record["FirstName"], record["LastName"]) == expected
    assert record["LS_Customer_ID__c"] == "182255-7" and record["PersonEmail"] == "Ana@Example.com"
    assert record["PersonMobilePhone"] == "(415) 555-0134" and record["Phone"] == "415 555 0199"


def test_long_and_control_character_text_is_cleaned_and_cut_to_field_length():
    assert mapping.clean_text("A\x00b\u200bc" + "x" * 300, "Product_Name__c") == ("Abc" + "x" * 252)
    assert mapping.clean_text("   ", "SKU__c") is None


def test_content_hash_changes_with_content_only():
    sale = sample_sale("docs_v3_sale_277_completed_with_relations.json")
    record, lines = mapping.transaction_record(sale, "1", SHOPS), mapping.line_records(sale, "1", {})
    assert mapping.content_hash(record, lines) == mapping.content_hash(dict(record), list(lines))
    assert mapping.content_hash(record, lines[:1]) != mapping.content_hash(record, lines)


@pytest.mark.parametrize("value", [
    "Rue Saint-Honoré", "€ 12", "line\u2028break", "\x7f", "😀 emoji", "quote \" and \\", "tab\there", "\ud800",
    1e-05, -2.5e-07, 0.0001, 1e16, 123456789.01, -0.0, 0.1, None, True,
], ids=repr)
def test_content_hash_is_the_digest_the_state_store_already_holds(value):
    # Fingerprints written by earlier versions (the standard json module's sorted, ASCII-escaped output) must
    # still match, or every sale in the look-back would be written again once after an upgrade.
    record = {"Product_Name__c": value, "LS_Sale_ID__c": "1-2", "Sales_Transaction__r": {"LS_Sale_ID__c": "1-2"}}
    written = json.dumps([record, [record]], sort_keys=True, separators=(",", ":"))
    assert mapping.content_hash(record, [record]) == hashlib.sha256(written.encode()).hexdigest()[:32]


def test_profile_for_enrichment_has_the_birthdate_and_the_first_real_address():
    # local midnight in Tokyo stored in UTC (the 8th at 15:00): the birthdate is the 9th, not the UTC day
    customer = Customer.of({"customerID": "7", "lastName": "Lima", "dob": "1981-04-08T15:00:00+00:00",
                                        "Contact": {"Addresses": {"ContactAddress": [
                                            {"address1": "", "city": "", "zip": "", "country": ""},
                                            {"address1": "700 St-Antoine E", "address2": "Apt 4", "city": "Montreal",
                                             "zip": "H2Y 1A6", "country": "Canada"}]}, "Emails": "", "Phones": ""}})
    assert mapping.profile_fields(customer, enrich=False) == {}
    assert mapping.profile_fields(customer, enrich=True) == {
        "PersonBirthdate": "1981-04-09", "PersonMailingStreet": "700 St-Antoine E, Apt 4",
        "PersonMailingCity": "Montreal", "PersonMailingPostalCode": "H2Y 1A6", "PersonMailingCountry": "Canada"}


# Days entered in zones west and east of UTC, in winter and in summer time. A day entered at UTC+13 or +14
# (New Zealand's summer, Tonga, Kiribati) is stored before 11:00 UTC of the day before and cannot be told from
# one entered at UTC-11 or -10: the contract's rule reads it a day early (docs/sync-rules.md).
ENTERED = [("America/New_York", "1990-01-15"), ("America/New_York", "1981-07-09"), ("Pacific/Honolulu", "1990-01-15"),
           ("US/Pacific", "1990-01-15"), ("US/Pacific", "1981-07-09"), ("UTC", "2001-10-28"),
           ("Europe/Paris", "1990-01-15"), ("Europe/Paris", "1981-07-09"), ("Asia/Tokyo", "2001-10-28"),
           ("Pacific/Auckland", "1981-07-09")]


@pytest.mark.parametrize(("entered_in", "day"), ENTERED)
def test_a_date_only_field_is_the_day_of_the_nearest_utc_midnight(entered_in, day):
    # Lightspeed sends the local midnight of the zone the day was entered in, in UTC, and names no zone
    assert mapping.calendar_day(entered_midnight(entered_in, day)) == day


def entered_midnight(zone: str, day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time(0), ZoneInfo(zone)).astimezone(timezone.utc)


def test_a_completed_sale_without_a_completion_time_is_named_with_the_date_left_empty():
    # The recorded 2016 page holds completed sales with no completeTime at all: Transaction_Date__c (completeTime,
    # contract §3) is then left empty, a gap the run must name (contract §4, "Data Lightspeed could not explain").
    sale = sample_sale("fixture_v1_sale_query_page2_load_relations_all.json")
    assert sale.completed and sale.complete_time is None
    assert mapping.transaction_record(sale, "1", SHOPS)["Transaction_Date__c"] is None
    assert [gap["left_empty"] for gap in mapping.gaps(sale, "1", SHOPS, {}) if gap["line"] is None] == [
        ["Transaction_Date__c"]]


def test_what_lightspeed_did_not_send_is_named_with_the_fields_left_empty():
    sale = Sale.of({"saleID": "5", "shopID": "9", "customerID": "42", "completed": "true",
                    "completeTime": "2026-03-01T10:00:00+00:00",
                    "SaleLines": {"SaleLine": [
                        {"saleLineID": "51", "itemID": "77"},  # the Item relation did not come
                        {"saleLineID": "52", "itemID": "0"},  # a line with no item: nothing missing
                        {"saleLineID": "53", "itemID": "3", "Item": {"itemID": "3", "categoryID": "8"}},
                        {"saleLineID": "54", "itemID": "4", "Item": {"itemID": "4", "categoryID": "1"}}]},
                    "SalePayments": {"SalePayment": [{"salePaymentID": "61", "amount": "10"},
                                                     {"salePaymentID": "62", "amount": "5", "archived": "true"}]}})
    categories = {1: Category(category_id=1, name="Rings")}
    assert mapping.gaps(sale, "1", SHOPS, categories) == [
        {"line": None, "record": "Shop 9", "left_empty": ["Shop_Name__c"]},
        {"line": None, "record": "Customer 42", "left_empty": ["Account__c"]},
        {"line": None, "record": "PaymentType of SalePayment 61", "left_empty": ["Payment_Methods__c"]},
        {"line": "1-51", "record": "Item 77", "left_empty": ["SKU__c", "Product_Name__c", "Category__c"]},
        {"line": "1-53", "record": "Category 8", "left_empty": ["Category__c"]}]
    assert mapping.gaps(Sale.of({"saleID": "6", "shopID": "1", "customerID": "0"}), "1", SHOPS, {}) == []
