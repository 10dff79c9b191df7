"""The benchmark's baseline: a naive sync that writes one record per Salesforce request. Not part of the product.

It reads the same Lightspeed pages as `lspos-sync sync` (the product's own client, so the paging and pacing
are identical) and maps sales and lines with the product's pure mapping; a new Person Account gets its
name, email and mobile phone. Then, record by record, over plain REST:

* per customer not seen before: one SOQL query (key, email or E.164 phone), then one write: stamp the key on
  the account found, or upsert a new Person Account on LS_Customer_ID__c;
* per sale: one upsert of the Sales_Transaction__c on LS_Sale_ID__c;
* per line: one upsert of the Sales_Line_Item__c on LS_Sale_Line_ID__c.

It matches customers less carefully than the product (no other phone formats, no ambiguity rules): it is there
to show what one request per record costs, not to be correct.

    python bench/naive_sync.py --env-file FILE
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import requests

from lspos_sync import mapping
from lspos_sync.config import load_settings, read_environment
from lspos_sync.customers import customer_phones, mobile_phone, normalise_email, primary_email
from lspos_sync.lightspeed.auth import LightspeedAuth
from lspos_sync.lightspeed.client import LightspeedClient
from lspos_sync.lightspeed.models import Sale
from lspos_sync.salesforce.queries import ACCOUNT_FIELDS, literal, person_record_type
from lspos_sync.state import StateStore


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, required=True)
    args = parser.parse_args()
    settings = load_settings(read_environment(args.env_file))
    account_id = settings.account_id
    until = datetime.now(UTC)
    assert settings.sync_start is not None, "LSPOS_SYNC_START must be set"

    salesforce = requests.Session()
    salesforce.headers["Authorization"] = f"Bearer {settings.salesforce.access_token}"
    data = f"{settings.salesforce.instance_url}/services/data/v{settings.salesforce.api_version}"
    calls = 0

    def call(method: str, path: str, body: dict | None = None) -> dict:
        nonlocal calls
        calls += 1
        response = salesforce.request(method, f"{data}/{path}", json=body, timeout=60)
        response.raise_for_status()
        return response.json() if response.content else {}

    def query(soql: str) -> list[dict]:
        return call("GET", f"query?q={quote(soql)}").get("records", [])

    record_type_id = query(person_record_type(settings.person_account_record_type))[0]["Id"]
    seen_customers: set[str] = set()
    written = {"accounts": 0, "transactions": 0, "lines": 0}
    with StateStore(settings.state_path) as store, httpx.Client(timeout=120) as http:
        auth = LightspeedAuth(http, store, account_id, settings.lightspeed_token_url, settings.client_id or "",
                              settings.client_secret or "", settings.refresh_token)
        lightspeed = LightspeedClient(http, settings.lightspeed_api_url, account_id, auth)
        shops, categories = lightspeed.shops(), lightspeed.categories()
        for page in lightspeed.sales(settings.sync_start, until):
            for payload in page:
                sale = payload if isinstance(payload, Sale) else Sale.of(payload)
                if not sale.completed:
                    continue
                transaction = {"attributes": {"type": mapping.TRANSACTION},
                               **mapping.transaction_record(sale, account_id, shops)}
                if sale.customer is not None and sale.customer_id is not None:
                    customer_key = mapping.key(account_id, sale.customer_id)
                    if customer_key not in seen_customers:
                        seen_customers.add(customer_key)
                        clauses = [f"{mapping.CUSTOMER_KEY} = {literal(customer_key)}"]
                        email = normalise_email(primary_email(sale.customer))
                        if email:
                            clauses.append(f"PersonEmail = {literal(email)}")
                        for phone in customer_phones(sale.customer, settings.phone_region):
                            clauses += [f"{field} = {literal(phone)}" for field in ("PersonMobilePhone", "Phone")]
                        found = query(f"SELECT {ACCOUNT_FIELDS} FROM Account WHERE IsPersonAccount = true "
                                      f"AND ({' OR '.join(clauses)}) LIMIT 1")
                        if found and not found[0].get(mapping.CUSTOMER_KEY):
                            call("PATCH", f"sobjects/Account/{found[0]['Id']}", {mapping.CUSTOMER_KEY: customer_key})
                        elif not found:
                            record = {"RecordTypeId": record_type_id, "FirstName": sale.customer.first_name,
                                      "LastName": sale.customer.last_name or f"Customer {sale.customer_id}",
                                      "PersonEmail": email, "PersonMobilePhone": mobile_phone(sale.customer)}
                            call("PATCH", f"sobjects/Account/{mapping.CUSTOMER_KEY}/{quote(customer_key)}",
                                 {k: v for k, v in record.items() if v})
                        written["accounts"] += 1
                    transaction["Account__r"] = {mapping.CUSTOMER_KEY: customer_key}
                sale_key = transaction.pop(mapping.SALE_KEY)
                transaction.pop("attributes")
                call("PATCH", f"sobjects/{mapping.TRANSACTION}/{mapping.SALE_KEY}/{quote(sale_key)}", transaction)
                written["transactions"] += 1
                for line in mapping.line_records(sale, account_id, categories):
                    line_key = line.pop(mapping.LINE_KEY)
                    call("PATCH", f"sobjects/{mapping.LINE}/{mapping.LINE_KEY}/{quote(line_key)}", line)
                    written["lines"] += 1
    print(json.dumps({"salesforce_api_calls": calls, "lightspeed_requests": lightspeed.requests,
                      "lightspeed_throttled": lightspeed.throttled, "written": written}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
