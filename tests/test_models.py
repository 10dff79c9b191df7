"""The Lightspeed models absorb every wire quirk, shown on the real bodies in the reference samples."""

import json
from decimal import Decimal
from pathlib import Path

import pytest

from lspos_sync.lightspeed.models import Customer, Sale, one_or_many

SAMPLES = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def sales_in(name: str) -> list[Sale]:
    return [Sale.model_validate(s) for s in one_or_many(sample(name), "Sale")]


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


def test_real_recorded_page_parses_every_sale_with_lines_as_object_or_list():
    sales = sales_in("fixture_v1_sale_query_page2_load_relations_all.json")
    assert len(sales) == 19
    assert {len(s.lines) for s in sales} >= {0, 1, 2}


def test_customer_contact_collections_as_objects():
    customers = [Customer.model_validate(c) for c in one_or_many(sample("docs_v3_customer_query_with_contact.json"), "Customer")]
    assert customers[0].phones[0].number == "360 555 2453"
    assert customers[0].emails[0].use_type == "Primary"


def test_inconsistent_partial_refund_example_still_parses():
    sale = sales_in("docs_v3_sale_302_partial_refund.json")[0]
    assert sale.lines == [] and len(sale.payments) == 1


@pytest.mark.parametrize("amount", ["abc", "NaN", "12,50"])
def test_non_numeric_amount_is_a_validation_error(amount):
    with pytest.raises(ValueError):
        Sale.model_validate({"saleID": "1", "calcTotal": amount})


def test_copying_a_sale_with_an_update_leaves_every_other_sale_as_it_was():
    # Sales of one shape share their set of fields present (memory); an update must not reach the others.
    first, second = sales_in("fixture_v1_sale_query_page2_load_relations_all.json")[:2]
    fields = set(second.model_fields_set)
    copied = first.model_copy(update={"customer": None})
    assert second.model_fields_set == fields and copied.customer is None and "customer" in copied.model_fields_set
