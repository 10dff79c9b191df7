"""The Lightspeed models absorb every wire quirk, shown on the real bodies in the reference samples."""

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from lspos_sync.lightspeed.models import Customer, InvalidPayload, Sale, one_or_many, sale_page

SAMPLES = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def sales_in(name: str) -> list[Sale]:
    return [Sale.of(s) for s in one_or_many(sample(name), "Sale")]


def test_completed_sale_parses_strings_into_typed_values():
    sale = sales_in("docs_v3_sale_277_completed_with_relations.json")[0]
    assert sale.sale_id == 277 and sale.completed is True and sale.voided is False
    assert sale.calc_total == Decimal("34.48") and sale.calc_tax2 == Decimal("2.99")
    assert sale.complete_time.isoformat() == "2016-11-10T13:51:54+00:00"
    assert [line.calc_total for line in sale.lines] == [Decimal("11.4860025"), Decimal("22.995")]


def test_lone_payment_object_becomes_a_one_element_list():
    sale = sales_in("docs_v3_sale_277_completed_with_relations.json")[0]
    assert len(sale.payments) == 1 and sale.payments[0].payment_type.name == "Cash"


def test_single_result_query_returns_an_object_that_becomes_one_sale():
    sales = sales_in("docs_v3_sale_query_single_result_as_object.json")
    assert len(sales) == 1 and sales[0].sale_id == 248


def test_zero_foreign_key_means_none():
    sale = sales_in("docs_v3_sale_277_completed_with_relations.json")[0]
    assert sale.lines[0].parent_sale_line_id is None
    assert sale.customer_id == 8


def test_refund_lines_keep_negative_quantity_and_parent_line():
    sale = sales_in("docs_v3_sale_282_full_refund.json")[0]
    assert sale.calc_total < 0
    assert all(line.unit_quantity < 0 for line in sale.lines)
    assert all(line.parent_sale_line_id is not None for line in sale.lines)


def test_empty_string_relations_become_empty_lists():
    sale = sales_in("docs_v3_sale_156_put_with_customer_contact_shop.json")[0]
    assert sale.customer.emails == [] and sale.customer.phones == []
    assert sale.lines == []


def test_update_time_is_read_whatever_its_spelling():
    updated = sales_in("docs_v3_sale_277_completed_with_relations.json")[0]  # spelled updateTime
    assert updated.update_time is not None
    lowercase = sales_in("docs_v3_sale_156_put_with_customer_contact_shop.json")[0]  # spelled updatetime
    assert lowercase.update_time is not None


@pytest.mark.parametrize("spelling", ["UpdateTime", "UPDATETIME", "Updatetime"])
def test_update_time_is_read_in_any_case_as_the_fact_sheet_advises(spelling):
    payload = {"saleID": "7", "timeStamp": "2026-01-01T10:00:00+00:00", spelling: "2026-01-02T10:00:00+00:00"}
    for sale in (Sale.of(payload), sale_page({"Sale": payload})[0]):
        assert sale.update_time == sale.last_update == datetime(2026, 1, 2, 10, tzinfo=timezone.utc)


def test_real_recorded_page_parses_every_sale_with_lines_as_object_or_list():
    sales = sales_in("fixture_v1_sale_query_page2_load_relations_all.json")
    assert len(sales) == 19
    assert {len(s.lines) for s in sales} >= {0, 1, 2}


def test_customer_contact_collections_as_objects():
    customers = [Customer.of(c) for c in one_or_many(sample("docs_v3_customer_query_with_contact.json"), "Customer")]
    assert customers[0].phones[0].number == "360 555 2453"
    assert customers[0].emails[0].use_type == "Primary"


def test_inconsistent_partial_refund_example_still_parses():
    sale = sales_in("docs_v3_sale_302_partial_refund.json")[0]
    assert sale.lines == [] and len(sale.payments) == 1


@pytest.mark.parametrize("amount", ["abc", "NaN", "12,50"])
def test_non_numeric_amount_is_a_validation_error(amount):
    with pytest.raises(ValueError):
        Sale.of({"saleID": "1", "calcTotal": amount})


def test_a_sale_given_its_customer_leaves_the_sale_it_came_from_as_it_was():
    first = sales_in("fixture_v1_sale_query_page2_load_relations_all.json")[0]
    customer = Customer.of({"customerID": "3", "lastName": "Lima"})
    copied = first.with_customer(customer)
    assert copied.customer == customer and copied.sale_id == first.sale_id and first.customer != customer


def test_a_page_reads_into_sales_whether_it_holds_one_or_many():
    many = sample("fixture_v1_sale_query_page2_load_relations_all.json")
    assert sale_page(many) == sales_in("fixture_v1_sale_query_page2_load_relations_all.json")
    lone = sample("docs_v3_sale_query_single_result_as_object.json")
    assert [sale.sale_id for sale in sale_page(lone)] == [248]
    assert sale_page({"@attributes": {"next": ""}, "Sale": ""}) == sale_page({"@attributes": {"next": ""}}) == []


def test_a_page_with_one_sale_that_does_not_read_is_left_to_be_read_sale_by_sale():
    good = {"saleID": "1", "completed": "true"}
    assert sale_page({"@attributes": {"next": ""}, "Sale": [good, {"saleID": "2", "calcTotal": "12,50"}]}) is None
    assert Sale.of(good).sale_id == 1  # the engine then reads each payload and parks only sale 2


def test_an_open_sale_without_a_completion_time_reads_with_none():
    sale = Sale.of({"saleID": "5", "completed": "false", "completeTime": "", "timeStamp": "2026-03-01T10:00:00+00:00"})
    assert sale.complete_time is None and sale.last_update == sale.time_stamp


@pytest.mark.parametrize(("payload", "where", "problem"), [
    ({"saleID": "1", "calcTotal": "12,50"}, "calcTotal", "Invalid decimal string: '12,50'"),
    ({"saleID": "1", "SaleLines": {"SaleLine": [{"saleLineID": "2"}, {"saleLineID": "3", "unitPrice": "Infinity"}]}},
     "SaleLines.SaleLine[1].unitPrice", "not a finite number: 'Infinity'"),
    ({"saleID": "1", "completeTime": "yesterday"}, "completeTime", "not a timestamp: 'yesterday'"),
    ({"saleID": "1", "Customer": {"customerID": "2", "dob": "soon"}}, "Customer.dob", "not a timestamp: 'soon'"),
    ({"saleID": "1", "SaleLines": {"SaleLine": {"saleLineID": "x"}}}, "SaleLines.SaleLine.saleLineID",
     "Expected `int`, got `str`: 'x'"),
], ids=["amount", "line amount", "timestamp", "customer birthdate", "line id"])
def test_a_sale_that_does_not_read_names_the_field_and_the_value(payload, where, problem):
    with pytest.raises(InvalidPayload) as refused:
        Sale.of(payload)
    assert (refused.value.where, refused.value.problem) == (where, problem)


@pytest.mark.parametrize(("sent", "archived"), [("true", True), ("false", False), (None, False)])
def test_a_customer_reads_its_archived_flag(sent, archived):
    payload = {"customerID": "4", "archived": sent} if sent is not None else {"customerID": "4"}
    assert Customer.of(payload).archived is archived


@pytest.mark.parametrize(("sent", "signed"), [("-0", False), ("-0.00", True), ("0", False)])
def test_a_zero_amount_keeps_the_sign_it_always_had(sent, signed):
    # "-0" has always read as 0 and "-0.00" as -0.00: the sign reaches the content hash through the records.
    assert Sale.of({"saleID": "1", "calcTotal": sent}).calc_total.is_signed() is signed
