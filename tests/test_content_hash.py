"""The content hash is the one the state store already holds: an upgrade must not rewrite every sale.

tests/data/content_hashes.json was written by tests/data/make_content_hashes.py with the version before the
models moved to pydantic and orjson was dropped; each case is checked against the code of today.
"""

import json
from pathlib import Path

import pytest
from pydantic_core import from_json

from lspos_sync import mapping
from lspos_sync.lightspeed.models import Category, Sale, Shop, sale_page

STORED = json.loads((Path(__file__).resolve().parent / "data" / "content_hashes.json").read_text())
SHOPS = {shop.shop_id: shop for shop in map(Shop.of, STORED["shops"])}
CATEGORIES = {category.category_id: category for category in map(Category.of, STORED["categories"])}


@pytest.mark.parametrize("case", STORED["sales"], ids=[f"{c['name']}{' salted' if c['salt'] else ''}" for c in STORED["sales"]])
def test_a_sale_hashes_as_the_previous_version_stored_it(case):
    assert digest(Sale.of(case["payload"]), case) == case["hash"]


@pytest.mark.parametrize("case", STORED["sales"], ids=lambda case: case["name"])
def test_a_sale_read_from_its_page_hashes_as_one_read_on_its_own(case):
    body = json.dumps({"@attributes": {"next": ""}, "Sale": [case["payload"]]})
    (sale,) = sale_page(from_json(body, cache_strings="all"))  # as the client reads a page
    assert digest(sale, case) == case["hash"]


def digest(sale: Sale, case: dict) -> str:
    transaction = mapping.transaction_record(sale, case["account"], SHOPS)
    lines = mapping.line_records(sale, case["account"], CATEGORIES)
    return mapping.content_hash(transaction, lines, case["salt"])


@pytest.mark.parametrize("case", STORED["documents"], ids=[c["name"] for c in STORED["documents"]])
def test_records_hash_as_the_previous_version_wrote_them(case):
    assert mapping.content_hash(case["transaction"], case["lines"], case["salt"]) == case["hash"]


def test_the_stored_cases_cover_the_quirks():
    names = {case["name"] for case in STORED["sales"]}
    assert {"negative zero amounts", "full refund", "voided", "lone line and lone payment objects",
            "empty relations as empty strings", "missing item and unknown category"} <= names
    assert len({case["hash"] for case in STORED["sales"]}) == len(STORED["sales"])  # no two cases alike
