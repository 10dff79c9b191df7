"""Issue #13 benchmark: a bulk backfill (`lspos-sync backfill --bulk`) of the reference workload into an org with
only the workload's CRM accounts, through the real CLI, against the emulators.

    python bench/bulk.py                       # 100,000 sales, no latency, the bucket draining 1,000 drips/s
    python bench/bulk.py --sales 10000 --sf-latency 0.15

Prints the Salesforce calls (by kind), Lightspeed requests, peak RSS, CPU and wall of the run, then checks that
every record is exact: one transaction per sale with Lightspeed's total, one line per sale line under its own
transaction, one account keyed to each Lightspeed customer, and each sale's match status as its customer's kind
calls for (a new customer's sales `Created`, matched ones `Email` or `Phone` on the customer's first sale,
`Linked` ones `Linked`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import benchmark
import emulators
import workload

TARGET_CALLS_PER_THOUSAND = 0.5
TARGET_RSS_MB = 100


def main() -> int:
    parser = argparse.ArgumentParser(description="Issue #13 bulk backfill benchmark (see the module docstring).")
    parser.add_argument("--sales", type=int, default=100_000)
    parser.add_argument("--ls-latency", type=float, default=0.0)
    parser.add_argument("--sf-latency", type=float, default=0.0)
    parser.add_argument("--sf-record-ms", type=float, default=0.0,
                        help="milliseconds of the org's work per record a /composite request writes (default 0)")
    parser.add_argument("--drip-scale", type=float, default=1000.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.gc, args.profile = False, None
    benchmark.compile_measured()
    launcher = benchmark.Launcher()
    emulators.install()
    workdir = Path(tempfile.mkdtemp(prefix="lspos-bench-bulk-"))
    try:
        stage = benchmark.Stage(workdir, args.sales, args, launcher)
        seeded = stage.seeded
        since = (seeded.first_sale - timedelta(days=1)).isoformat(timespec="seconds")
        command = [sys.executable, "-m", "lspos_sync", "backfill", "--from", since, "--bulk", "--json",
                   "--env-file", stage.env_file.name]
        run = stage.run("lspos-sync backfill --bulk", command, args.sales)
        problems = check(stage, seeded)
        stage.stop()
    finally:
        launcher.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    calls = run.per_thousand(run.sf_calls)
    print(f"{benchmark.source()}; workload: {seeded.sales} sales, {seeded.lines} lines, customers {seeded.customers}, "
          f"{seeded.crm_only} CRM-only Person Accounts; seeded in {stage.seed_seconds:.0f} s; latency Lightspeed "
          f"{args.ls_latency * 1000:.0f} ms, Salesforce {args.sf_latency * 1000:.0f} ms")
    print(f"exit {run.exit_code}; sales {run.report.get('sales')}; records {run.report.get('records')}")
    print(f"Salesforce calls {run.sf_calls} ({calls:.2f} /1k, target ≤ {TARGET_CALLS_PER_THOUSAND}); Lightspeed "
          f"requests {run.ls_requests} ({run.per_thousand(run.ls_requests):.1f} /1k), 429s {run.throttled}; "
          f"peak RSS {run.max_rss_mb:.0f} MB (target < {TARGET_RSS_MB}); CPU {run.cpu:.1f} s; wall {run.wall:.1f} s")
    for detail in run.details:
        print(f"  {detail}")
    print("records: " + ("exact" if not problems else "NOT exact: " + "; ".join(problems[:10])))
    met = not problems and calls <= TARGET_CALLS_PER_THOUSAND and run.max_rss_mb < TARGET_RSS_MB and \
        run.exit_code == 0
    print("meets the targets" if met else "misses a target")
    return 0 if met else 1


def check(stage: benchmark.Stage, seeded: workload.Seeded) -> list[str]:
    """What is not exact in the org after the run (empty when every record is)."""
    ls, sf = stage.lightspeed, stage.salesforce
    account = ls.account_id
    problems: list[str] = []
    transactions = sf.records("Sales_Transaction__c")
    by_key = Counter(t["LS_Sale_ID__c"] for t in transactions)
    sales = {f"{account}-{sale_id}": ls.sale(sale_id) for sale_id in ls._sales}
    if set(by_key) != set(sales) or max(by_key.values(), default=1) != 1:
        problems.append(f"{len(transactions)} transactions for {len(sales)} sales")
    for record in transactions:
        sale = sales.get(record["LS_Sale_ID__c"])
        cents = Decimal(sale["calcTotal"]).quantize(Decimal("0.01")) if sale is not None else None
        if sale is not None and Decimal(str(record["Total__c"])) != cents:
            problems.append(f"{record['LS_Sale_ID__c']}: total {record['Total__c']} for {sale['calcTotal']}")
    sale_of = {t["Id"]: t["LS_Sale_ID__c"] for t in transactions}
    lines = sf.records("Sales_Line_Item__c")
    expected = {f"{account}-{line['saleLineID']}": key for key, sale in sales.items()
                for line in _lines(sale)}
    found = {line["LS_Sale_Line_ID__c"]: sale_of.get(line["Sales_Transaction__c"]) for line in lines}
    if len(lines) != len(expected) or found != expected:
        problems.append(f"{len(lines)} lines for {len(expected)} sale lines (or a line under another sale)")
    keyed = Counter(a["LS_Customer_ID__c"] for a in sf.records("Account") if a.get("LS_Customer_ID__c"))
    customers = {f"{account}-{c}" for c in ls._rows["Customer"]}
    if set(keyed) != customers or max(keyed.values(), default=1) != 1:
        problems.append(f"{len(keyed)} keyed accounts for {len(customers)} customers")
    statuses = Counter(t["Match_Status__c"] for t in transactions)
    if statuses["Created"] < seeded.customers[workload.NEW] or statuses["Ambiguous"] or statuses["Guest"]:
        problems.append(f"match statuses {dict(statuses)} for customers {seeded.customers}")
    return problems


def _lines(sale: dict) -> list[dict]:
    relation = sale.get("SaleLines") or {}
    found = relation.get("SaleLine", []) if isinstance(relation, dict) else []
    return found if isinstance(found, list) else [found]


if __name__ == "__main__":
    sys.exit(main())
