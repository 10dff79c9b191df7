"""`reconcile`: Lightspeed and Salesforce compared over a window of completion times, per shop and UTC day
and sale by sale. It reads both systems and writes to neither (nor to the checkpoint).

The window is on `completeTime` (Transaction_Date__c), half-open: `--from 2026-03-01 --to 2026-04-01` is
March, and consecutive windows never count a sale twice. Lightspeed's side is what the sync would write,
computed with the sync's own mapping; Salesforce's side is what Salesforce holds, read in one `/composite`
request (plus one call per further 2,000 records): aggregate queries for the figures per shop and day, and
the records themselves for the sale-by-sale diff.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from lspos_sync import mapping
from lspos_sync.config import Settings
from lspos_sync.engine import Window
from lspos_sync.errors import ConfigError
from lspos_sync.lightspeed.auth import LightspeedAuth
from lspos_sync.lightspeed.client import LightspeedClient, http_client
from lspos_sync.lightspeed.models import InvalidPayload, Sale, Shop
from lspos_sync.salesforce import queries
from lspos_sync.salesforce.client import SalesforceClient
from lspos_sync.state import StateStore, iso

if TYPE_CHECKING:
    from lspos_sync.run import Report
    from lspos_sync.output import Output

MAX_GROUPS = 2000  # rows one aggregate query may answer: GROUP BY results cannot be paged
_CENT = Decimal("0.01")
_COMPARED = ("Total__c", "Status__c")
_NEEDED = ("Total__c", "Status__c", "Shop_Name__c", "Transaction_Date__c")


@dataclass(frozen=True)
class SaleFigures:
    """What one system says about one sale: the fields reconciliation looks at."""

    sale_key: str
    shop: str | None
    day: str | None  # the UTC day of Transaction_Date__c, YYYY-MM-DD
    total: Decimal | None
    status: str | None

    def value(self, field: str) -> Decimal | str | None:
        return self.total if field == "Total__c" else self.status

    def as_dict(self) -> dict[str, Any]:
        return {"sale_key": self.sale_key, "shop": self.shop, "day": self.day, "total": _number(self.total),
                "status": self.status}


@dataclass
class DayFigures:
    sales: int = 0
    total: Decimal = Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        return {"sales": self.sales, "total": _number(self.total)}


def reconcile(settings: Settings, output: "Output", since: datetime, until: datetime,
              account: str | None = None) -> int:
    """Compares the window, for the account given or each configured one; 0 when both systems agree on every
    shop, day and sale, 3 when they differ."""
    from lspos_sync.run import each_account

    window = Window(_whole_second(since), _whole_second(until))
    return each_account("reconcile", settings, output, account, lambda one: _reconcile(one, output, window),
                        locking=False)


def _reconcile(settings: Settings, output: "Output", window: Window) -> "Report":
    from lspos_sync import fieldmap
    from lspos_sync.run import Report

    names = fieldmap.for_settings(settings)
    switched_off = [f for f in _NEEDED if not names.is_on(mapping.TRANSACTION, f)]
    if switched_off:
        raise ConfigError(f"reconcile needs {', '.join(switched_off)} on {mapping.TRANSACTION}, which the mapping "
                          "file switches off")
    with StateStore(settings.state_path) as store, http_client() as http:
        auth = LightspeedAuth(http, store, settings.account_id, settings.lightspeed_token_url,
                              settings.client_id or "", settings.client_secret or "", settings.refresh_token,
                              settings.refresh_token_variable)
        lightspeed = LightspeedClient(http, settings.lightspeed_api_url, settings.account_id, auth)
        salesforce = SalesforceClient(settings.salesforce, reserve_percent=settings.api_reserve_percent,
                                      field_map=names)
        shops = lightspeed.shops()
        expected, unreadable = lightspeed_sales(lightspeed, settings.account_id, window, shops)
        held, salesforce_days = salesforce_sales(salesforce, settings.account_id, window, len(shops))
    data = compare(settings.account_id, window, expected, unreadable, held, salesforce_days)
    data.update({"salesforce_api_calls": salesforce.api_calls, "lightspeed_requests": lightspeed.requests})
    return Report(data, _report(data, output), data["exit_code"])


# -- Lightspeed: what the sync would have written

def lightspeed_sales(lightspeed: LightspeedClient, account_id: str, window: Window,
                     shops: dict[int, Shop]) -> tuple[dict[str, SaleFigures], list[dict[str, Any]]]:
    """The completed sales of the window as Salesforce should hold them, and the sales Lightspeed sent in a
    shape the sync cannot read (it parks those, so Salesforce does not have them either)."""
    expected: dict[str, SaleFigures] = {}
    unreadable: list[dict[str, Any]] = []
    for page in lightspeed.sales_completed_between(window.since, window.until):
        for payload in page:
            try:
                sale = Sale.of(payload)
            except InvalidPayload as error:
                unreadable.append({"sale_id": payload.get("saleID"), "reason": str(error)})
                continue
            moment = sale.complete_time
            if not sale.completed or moment is None or not window.since <= moment < window.until:
                continue  # the window is half-open, whatever the server's inclusive filter returned
            record = mapping.transaction_record(sale, account_id, shops)
            expected[record[mapping.SALE_KEY]] = SaleFigures(
                record[mapping.SALE_KEY], record["Shop_Name__c"], record["Transaction_Date__c"][:10],
                _cents(record["Total__c"]), record["Status__c"])
    return expected, unreadable


# -- Salesforce: what it holds, in as few calls as the five-query limit of /composite allows

def salesforce_sales(salesforce: SalesforceClient, account_id: str, window: Window,
                     shop_count: int) -> tuple[dict[str, SaleFigures], dict[tuple, DayFigures]]:
    """The account's transactions of the window, and Salesforce's own count and sum per shop and UTC day."""
    # Each aggregate covers few enough days that its groups (shops, plus "no shop", per day) fit one answer.
    days_per_query = max(1, MAX_GROUPS // (shop_count + 1))
    statements = [transactions_soql(account_id, window)]
    statements += [totals_soql(account_id, part) for part in _parts(window, days_per_query)]
    answers = salesforce.queries(statements)
    held = {}
    for record in answers[0]:
        day = record.get("Transaction_Date__c")
        held[record[mapping.SALE_KEY]] = SaleFigures(
            record[mapping.SALE_KEY], record.get("Shop_Name__c"),
            datetime.fromisoformat(day).astimezone(timezone.utc).date().isoformat() if day else None,
            _cents(record.get("Total__c")), record.get("Status__c"))
    days: dict[tuple, DayFigures] = defaultdict(DayFigures)
    for rows in answers[1:]:
        for row in rows:
            figures = days[(row["d"], row["Shop_Name__c"])]
            figures.sales += int(row["n"])
            figures.total += _cents(row["t"]) or Decimal(0)
    return held, dict(days)


def _where(account_id: str, part: Window) -> str:
    return (f"Transaction_Date__c >= {mapping.salesforce_datetime(part.since)} "
            f"AND Transaction_Date__c < {mapping.salesforce_datetime(part.until)} "
            f"AND {mapping.SALE_KEY} LIKE {queries.literal(mapping.key(account_id, '%'))}")


def transactions_soql(account_id: str, window: Window) -> str:
    return (f"SELECT {mapping.SALE_KEY}, Shop_Name__c, Transaction_Date__c, Total__c, Status__c "
            f"FROM {mapping.TRANSACTION} WHERE {_where(account_id, window)}")


def totals_soql(account_id: str, part: Window) -> str:
    """Days are UTC days: without convertTimezone(), DAY_ONLY() takes the date in UTC."""
    return (f"SELECT Shop_Name__c, DAY_ONLY(Transaction_Date__c) d, COUNT(Id) n, SUM(Total__c) t "
            f"FROM {mapping.TRANSACTION} WHERE {_where(account_id, part)} "
            "GROUP BY Shop_Name__c, DAY_ONLY(Transaction_Date__c)")


def _parts(window: Window, days: int) -> list[Window]:
    """The window cut at UTC midnights into pieces of at most `days` days."""
    parts, start = [], window.since
    while True:
        cut = datetime.combine(start.date() + timedelta(days=days), time(), timezone.utc)
        if cut >= window.until:
            return parts + [Window(start, window.until)]
        parts.append(Window(start, cut))
        start = cut


# -- the comparison

def compare(account_id: str, window: Window, expected: dict[str, SaleFigures], unreadable: list[dict[str, Any]],
            held: dict[str, SaleFigures], salesforce_days: dict[tuple, DayFigures]) -> dict[str, Any]:
    lightspeed_days: dict[tuple, DayFigures] = defaultdict(DayFigures)
    for sale in expected.values():
        figures = lightspeed_days[(sale.day, sale.shop)]
        figures.sales += 1
        figures.total += sale.total or Decimal(0)
    rows = []
    for day, shop in sorted(set(lightspeed_days) | set(salesforce_days), key=lambda k: (k[0] or "", k[1] or "")):
        ours, theirs = lightspeed_days.get((day, shop), DayFigures()), salesforce_days.get((day, shop), DayFigures())
        rows.append({"day": day, "shop": shop, "lightspeed": ours.as_dict(), "salesforce": theirs.as_dict(),
                     "agree": (ours.sales, ours.total) == (theirs.sales, theirs.total)})
    missing = [expected[key].as_dict() for key in sorted(expected, key=_key_order) if key not in held]
    extra = [held[key].as_dict() for key in sorted(held, key=_key_order) if key not in expected]
    different = []
    for key in sorted(set(expected) & set(held), key=_key_order):
        fields = [f for f in _COMPARED if expected[key].value(f) != held[key].value(f)]
        if fields:
            different.append({"sale_key": key, "fields": fields, "lightspeed": expected[key].as_dict(),
                              "salesforce": held[key].as_dict()})
    agree = all(row["agree"] for row in rows) and not (missing or extra or different or unreadable)
    return {
        "command": "reconcile", "account_id": account_id,
        "window": {"from": iso(window.since), "to": iso(window.until), "field": "Transaction_Date__c",
                   "days": "UTC", "to_excluded": True},
        "outcome": "agree" if agree else "differ", "exit_code": 0 if agree else 3,
        "lightspeed": {"sales": len(expected), "total": _number(sum((s.total or 0 for s in expected.values()),
                                                                    Decimal(0)))},
        "salesforce": {"sales": len(held), "total": _number(sum((s.total or 0 for s in held.values()), Decimal(0)))},
        "by_shop_and_day": rows, "missing": missing, "extra": extra, "different": different,
        "unreadable": unreadable,
    }


def _report(data: dict[str, Any], output: "Output") -> list[str]:
    """Plain lines: the shop/days that disagree (a table of them all on a terminal), each sale that differs,
    then one summary line, so a run that agrees prints one line."""
    lines = []
    if output.fancy and not output.as_json:
        _table(data)
    else:
        for row in data["by_shop_and_day"]:
            if not row["agree"]:
                ours, theirs = row["lightspeed"], row["salesforce"]
                lines.append(f"{row['day']} {row['shop'] or '(no shop)'}: Lightspeed {ours['sales']} sale(s) "
                             f"{ours['total']:.2f}, Salesforce {theirs['sales']} sale(s) {theirs['total']:.2f}")
    for sale in data["missing"]:
        lines.append(f"missing in Salesforce: {sale['sale_key']} ({_describe(sale)})")
    for sale in data["extra"]:
        lines.append(f"extra in Salesforce: {sale['sale_key']} ({_describe(sale)})")
    for sale in data["different"]:
        changes = "; ".join(f"{field} {_shown(sale['lightspeed'], field)} in Lightspeed, "
                            f"{_shown(sale['salesforce'], field)} in Salesforce" for field in sale["fields"])
        lines.append(f"different: {sale['sale_key']}: {changes}")
    for sale in data["unreadable"]:
        lines.append(f"unreadable in Lightspeed: sale {sale['sale_id']}: {sale['reason']}")
    ours, theirs = data["lightspeed"], data["salesforce"]
    lines.append(
        f"reconcile account {data['account_id']} [{data['window']['from']} .. {data['window']['to']}), UTC days: "
        f"Lightspeed {ours['sales']} sale(s) {ours['total']:.2f}, Salesforce {theirs['sales']} sale(s) "
        f"{theirs['total']:.2f}; {len(data['missing'])} missing, {len(data['extra'])} extra, "
        f"{len(data['different'])} different" + (f", {len(data['unreadable'])} unreadable" if data["unreadable"] else "")
        + f": {'agree' if data['exit_code'] == 0 else 'they differ'}; {data['salesforce_api_calls']} Salesforce "
        f"call(s), {data['lightspeed_requests']} Lightspeed request(s)")
    return lines


def _table(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reconcile: account {data['account_id']}, per shop and UTC day")
    for column in ("day", "shop", "Lightspeed sales", "Lightspeed total", "Salesforce sales", "Salesforce total",
                   "agree"):
        table.add_column(column)
    for row in data["by_shop_and_day"]:
        table.add_row(row["day"], row["shop"] or "(no shop)", str(row["lightspeed"]["sales"]),
                      f"{row['lightspeed']['total']:.2f}", str(row["salesforce"]["sales"]),
                      f"{row['salesforce']['total']:.2f}", "yes" if row["agree"] else "NO")
    Console(stderr=True).print(table)


def _describe(sale: dict[str, Any]) -> str:
    total = f"{sale['total']:.2f}" if sale["total"] is not None else "no total"
    return f"{sale['shop'] or '(no shop)'}, {sale['day']}, {sale['status'] or 'no status'} {total}"


def _shown(sale: dict[str, Any], field: str) -> str:
    value = sale["total"] if field == "Total__c" else sale["status"]
    return "empty" if value is None else f"{value:.2f}" if field == "Total__c" else str(value)


def _key_order(sale_key: str) -> tuple:
    _, _, sale_id = sale_key.rpartition("-")
    return (int(sale_id), "") if sale_id.isdigit() else (0, sale_key)


def _cents(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(value)).quantize(_CENT)


def _number(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _whole_second(moment: datetime) -> datetime:
    """Both systems keep whole seconds: a bound with a fraction moves up to the next second on both sides."""
    return moment if moment.microsecond == 0 else moment.replace(microsecond=0) + timedelta(seconds=1)
