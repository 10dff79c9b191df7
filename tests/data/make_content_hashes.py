"""Writes content_hashes.json: the content hash of a varied set of sales, as this version computes it.

Run once, before the mapping, the models or the JSON writer change (python tests/data/make_content_hashes.py);
tests/test_content_hash.py then checks that later versions give the same hashes, so that an upgrade does not
rewrite every sale. Each case keeps its input as Lightspeed sent it (a Sale payload, the shops and categories
as their payloads, the account and the mapping-file salt), or, for the hash alone, the records hashed.
"""

from __future__ import annotations

import json
import random
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lspos_sync import mapping  # noqa: E402
from lspos_sync.lightspeed.models import Category, Sale, Shop, one_or_many  # noqa: E402

SAMPLES = (ROOT / "tests" / "samples", Path("/work/shared/reference/samples/lightspeed"))
SHOPS = [{"shopID": "1", "name": "West Bolduc", "timeZone": "America/New_York"},
         {"shopID": "2", "name": "  Saint-Honoré\u00a0Boutique\t", "timeZone": "Europe/Paris"},
         {"shopID": "3", "name": "Rodeo Drive " + "x" * 100}]
CATEGORIES = [{"categoryID": "1", "name": "Rings"}, {"categoryID": "3", "name": "Accessories"},
              {"categoryID": "4", "name": "Maroquinerie \u2014 cuir"}, {"categoryID": "5", "name": "Silk\x7fscarves"}]


def sale_hash(payload: dict, account: str, salt: str) -> str:
    sale = Sale.of(payload)
    shops = {s.shop_id: s for s in map(Shop.of, SHOPS)}
    categories = {c.category_id: c for c in map(Category.of, CATEGORIES)}
    transaction = mapping.transaction_record(sale, account, shops)
    lines = mapping.line_records(sale, account, categories)
    return mapping.content_hash(transaction, lines, salt)


def line(line_id: int, quantity: str = "1", price: str = "10", total: str | None = None, **extra: object) -> dict:
    body = {"saleLineID": str(line_id), "unitQuantity": quantity, "unitPrice": price, "calcLineDiscount": "0",
            "calcTax1": "0", "calcTax2": "0", "calcTotal": total if total is not None else str(Decimal(quantity) * Decimal(price)),
            "itemID": "0", "parentSaleLineID": "0"}
    body.update({k: v for k, v in extra.items()})
    return body


def sale(sale_id: int, **fields: object) -> dict:
    body = {"saleID": str(sale_id), "ticketNumber": f"22000000{sale_id:04d}", "completed": "true", "voided": "false",
            "archived": "false", "timeStamp": "2026-03-01T10:00:00+00:00", "completeTime": "2026-03-01T10:05:09+00:00",
            "updatetime": "2026-03-01T10:05:09+00:00", "calcSubtotal": "10", "calcDiscount": "0", "calcTax1": "0",
            "calcTax2": "0", "calcTotal": "10", "customerID": "0", "shopID": "1"}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


ITEM = {"itemID": "5", "description": "Silk scarf", "customSku": "", "systemSku": "210000000005", "categoryID": "3"}
PAYMENT = {"salePaymentID": "7", "amount": "10", "archived": "false", "PaymentType": {"paymentTypeID": "1", "name": "Cash"}}


def crafted() -> list[tuple[str, dict]]:
    return [
        ("lone line and lone payment objects", sale(1, SaleLines={"SaleLine": line(10, Item=ITEM, itemID="5")},
                                                   SalePayments={"SalePayment": PAYMENT})),
        ("lines and payments as lists", sale(2, SaleLines={"SaleLine": [line(20, Item=ITEM, itemID="5"), line(21, "2", "3.335")]},
                                         SalePayments={"SalePayment": [PAYMENT, {**PAYMENT, "salePaymentID": "8", "PaymentType": {"paymentTypeID": "2", "name": "Credit Card"}}]})),
        ("empty relations as empty strings", sale(3, SaleLines="", SalePayments="", Customer="")),
        ("relations absent", sale(4)),
        ("voided", sale(5, voided="true", SaleLines={"SaleLine": line(50)})),
        ("full refund", sale(6, calcSubtotal="-29.99", calcTax1="-1.4985", calcTax2="-2.99", calcTotal="-34.4785",
                             SaleLines={"SaleLine": [line(60, "-1", "29.99", "-34.4785", parentSaleLineID="12", calcTax1="-1.4985", calcTax2="-2.99")]},
                             SalePayments={"SalePayment": {**PAYMENT, "amount": "-34.48"}})),
        ("voided refund", sale(7, voided="true", calcTotal="-5")),
        ("negative zero amounts", sale(8, calcSubtotal="-0", calcDiscount="-0.00", calcTax1="-0", calcTax2="0", calcTotal="-0.0",
                                       SaleLines={"SaleLine": [line(80, "-0", "-0", "-0"), line(81, "0", "0", "0")]},
                                       SalePayments={"SalePayment": {**PAYMENT, "amount": "-0.00"}})),
        ("negative zero after rounding", sale(9, calcTotal="-0.004", calcTax1="-0.001", SaleLines={"SaleLine": line(90, "1", "-0.0049", "-0.0049")})),
        ("discounts", sale(10, calcSubtotal="100", calcDiscount="15.005", calcTotal="84.995",
                           SaleLines={"SaleLine": [line(100, "1", "60", "50.995", calcLineDiscount="9.005"), line(101, "2", "20", "34", calcLineDiscount="6")]})),
        ("half-up ties", sale(11, calcSubtotal="2.675", calcTax1="0.0025", calcTax2="0.0025", calcTotal="-34.485",
                              SaleLines={"SaleLine": line(110, "1", "1.004999", "0.005")})),
        ("missing item and unknown category", sale(12, SaleLines={"SaleLine": [line(120, itemID="99", Item=""),
                                                                              line(121, itemID="6", Item={**ITEM, "itemID": "6", "categoryID": "42"})]})),
        ("item without category, custom sku", sale(13, SaleLines={"SaleLine": line(130, itemID="5", Item={**ITEM, "customSku": "  SC-01 ", "categoryID": "0"})})),
        ("unknown shop", sale(14, shopID="77")),
        ("no shop", sale(15, shopID="0")),
        ("customer by id only", sale(16, customerID="31")),
        ("customer loaded", sale(17, customerID="32", Customer={"customerID": "32", "firstName": "Ana", "lastName": "Lima", "dob": "",
                                                                "Contact": {"Emails": {"ContactEmail": {"address": "ana@example.com", "useType": "Primary"}}, "Phones": ""}})),
        ("archived payment and payment without type", sale(18, SalePayments={"SalePayment": [
            {**PAYMENT, "archived": "true", "amount": "99"}, {"salePaymentID": "9", "amount": "4", "archived": "false"},
            {**PAYMENT, "salePaymentID": "10", "amount": "6", "PaymentType": ""}]})),
        ("duplicate and blank payment type names", sale(19, SalePayments={"SalePayment": [
            PAYMENT, {**PAYMENT, "salePaymentID": "11", "PaymentType": {"paymentTypeID": "1", "name": " Cash "}},
            {**PAYMENT, "salePaymentID": "12", "PaymentType": {"paymentTypeID": "3", "name": "   "}}]})),
        ("older updateTime spelling", {**{k: v for k, v in sale(20).items() if k != "updatetime"}, "updateTime": "2026-03-02T08:00:00-05:00"}),
        ("no update time", {k: v for k, v in sale(21).items() if k != "updatetime"}),
        ("no completion time", sale(22, completeTime="")),
        ("fractional seconds and offsets", sale(23, completeTime="2026-03-01T23:59:59.999-08:00", updatetime="2026-03-02T07:59:59.5+00:00")),
        ("naive timestamps", sale(24, completeTime="2026-03-01T10:05:09", updatetime="2026-03-01T10:05:09")),
        ("unicode, control and astral characters", sale(25, ticketNumber="T\u00e9\x00st\u200b\U0001F600\n2",
                                                        SaleLines={"SaleLine": line(250, itemID="5", Item={**ITEM, "description": "Foulard \u00ab soie \u00bb \U0001F9E3\x7f\u2028end", "customSku": "\u00c9-1"})})),
        ("texts over the field lengths", sale(26, ticketNumber="9" * 60, SaleLines={"SaleLine": line(260, itemID="5", Item={**ITEM, "description": "long " * 80, "customSku": "S" * 100})})),
        ("tiny quantities and amounts", sale(27, calcTax1="0.00001", SaleLines={"SaleLine": [line(270, "0.00001", "1000", "0.01"), line(271, "0.0001", "1", "0.0001"), line(272, "1E-7", "3", "0")]})),
        ("large and exponent amounts", sale(28, calcSubtotal="12345678.905", calcTotal="1.2345E+7", SaleLines={"SaleLine": line(280, "1000000", "99999.995", "99999995000")})),
        ("numbers given as JSON numbers", {**sale(29), "calcTotal": 10.5, "saleID": 29, "completed": True, "shopID": 2,
                                           "SaleLines": {"SaleLine": line(290, itemID="5", Item=ITEM) | {"unitQuantity": 3, "saleLineID": 290}}}),
        ("flags as 1/0 and padded", sale(30, completed="1", voided="0", archived="false")),
        ("shop names that need cleaning", sale(31, shopID="2")),
        ("shop name over the length", sale(32, shopID="3")),
        ("catalogue text with DEL", sale(33, SaleLines={"SaleLine": line(330, itemID="5", Item={**ITEM, "categoryID": "5"})})),
        ("category with non-ASCII name", sale(34, SaleLines={"SaleLine": line(340, itemID="5", Item={**ITEM, "categoryID": "4"})})),
        ("an empty SaleLines wrapper", sale(35, SaleLines={}, SalePayments={})),
        ("quantity with trailing zeros", sale(36, SaleLines={"SaleLine": line(360, "2.000", "5.50", "11.00")})),
    ]


def generated(count: int) -> list[tuple[str, dict]]:
    """Sales such as a till makes, from a seeded random generator."""
    rng = random.Random(12)
    cases = []
    for index in range(count):
        sale_id = 1000 + index
        lines = []
        for position in range(rng.randint(0, 5)):
            quantity = rng.choice(["1", "2", "3", "-1", "0.5"])
            price = str(Decimal(rng.randint(1, 200000)) / 100)
            tax = (Decimal(quantity) * Decimal(price) * Decimal(rng.choice(["0", "0.04", "0.0875", "0.2"]))).normalize()
            discount = rng.choice(["0", "0", "1.5", "10"])
            total = Decimal(quantity) * Decimal(price) - Decimal(discount) + tax
            item = rng.choice([None, "", {**ITEM, "itemID": str(sale_id * 10 + position), "description": rng.choice(["Scarf", "Bague or", "Montre"]),
                                          "customSku": rng.choice(["", "CS-%d" % position]), "categoryID": rng.choice(["0", "1", "3", "4", "9"])}])
            body = line(sale_id * 10 + position, quantity, price, str(total), calcTax1=str(tax), calcLineDiscount=discount,
                        itemID="0" if item is None else str(sale_id * 10 + position))
            if item is not None:
                body["Item"] = item
            lines.append(body)
        total = sum((Decimal(l["calcTotal"]) for l in lines), Decimal(0))
        payments = [{**PAYMENT, "salePaymentID": str(sale_id * 10 + p), "amount": str(total),
                     "PaymentType": {"paymentTypeID": "1", "name": rng.choice(["Cash", "Credit Card", "Gift Card"])}}
                    for p in range(rng.choice([0, 1, 1, 2]))]
        shape = rng.random()
        fields = {"calcTotal": str(total), "calcSubtotal": str(total), "voided": rng.choice(["false"] * 9 + ["true"]),
                  "shopID": rng.choice(["0", "1", "2", "3"]), "customerID": rng.choice(["0", "5"]),
                  "completeTime": f"2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T{rng.randint(10, 23)}:0{rng.randint(0, 9)}:00+00:00"}
        if lines:
            fields["SaleLines"] = {"SaleLine": lines[0] if len(lines) == 1 and shape < 0.5 else lines}
        if payments:
            fields["SalePayments"] = {"SalePayment": payments[0] if len(payments) == 1 and shape < 0.5 else payments}
        cases.append((f"generated {index}", sale(sale_id, **fields)))
    return cases


def samples() -> list[tuple[str, dict]]:
    cases, seen = [], set()
    for folder in SAMPLES:
        for path in sorted(folder.glob("*sale*.json")):
            if path.name in seen:
                continue
            seen.add(path.name)
            for index, payload in enumerate(one_or_many(json.loads(path.read_text()), "Sale")):
                cases.append((f"{path.name} #{index}", payload))
    return cases


def documents() -> list[tuple[str, list, str]]:
    """Records hashed as they are, for what the JSON writer must write alike: escapes, floats, nesting."""
    return [
        ("floats", [{"a": 0.1, "b": 1e-05, "c": 1e-7, "d": -0.0, "e": 1e16, "f": 123456789.12, "g": 5e-324, "h": 0.0001}, []], ""),
        ("nulls, booleans, integers", [{"z": None, "y": True, "x": False, "w": 10 ** 20, "v": -3}, [{"k": None}]], ""),
        ("escapes", [{"t": "quote \" backslash \\ slash / tab \t newline \n nul \x00 bell \x07 del \x7f"}, []], ""),
        ("non-ASCII", [{"t": "caf\u00e9 \u00ab\u00bb \u2028 \u4e2d\u6587 \U0001F600 \U00010000 \uffff"}, []], ""),
        ("lone surrogate", [{"t": "bad \ud800 text"}, []], ""),
        ("key order", [{"b": 1, "a": {"d": 2, "c": [3, {"f": 4, "e": 5}]}}, [{"z": 1, "A": 2, "_": 3, "\u00e9": 4}]], "map-v1"),
        ("salted", [{"LS_Sale_ID__c": "1-1"}, []], "salt with \u00e9"),
    ]


def main() -> None:
    account = "182255"
    output = {"sales": [], "documents": []}
    for name, payload in samples() + crafted() + generated(100):
        for salt in ("", "fm:3f2a"):
            if salt and not name.startswith(("docs_v3_sale_277", "lone line", "unicode")):
                continue
            output["sales"].append({"name": name, "account": account, "salt": salt, "payload": payload,
                                    "hash": sale_hash(payload, account, salt)})
    for name, (transaction, lines), salt in documents():
        output["documents"].append({"name": name, "transaction": transaction, "lines": lines, "salt": salt,
                                    "hash": mapping.content_hash(transaction, lines, salt)})
    output["shops"], output["categories"] = SHOPS, CATEGORIES
    target = Path(__file__).with_name("content_hashes.json")
    target.write_text(json.dumps(output, sort_keys=True) + "\n")
    print(f"{len(output['sales'])} sales and {len(output['documents'])} documents -> {target}")


if __name__ == "__main__":
    main()
