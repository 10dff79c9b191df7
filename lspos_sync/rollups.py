"""Loyalty roll-ups (LSPOS_ROLLUPS=true): four Account fields kept exact for the accounts a run touched.

Lifetime_Spend__c is the sum of Total__c over the account's transactions with status Completed or
Refund; Purchase_Count__c counts the Completed ones; First/Last_Purchase_Date__c are the earliest and
latest Transaction_Date__c among the Completed ones. Salesforce computes them (SOQL aggregates, one
statement per thousand accounts); this module builds the statements and turns the groups into values.
A dry-run has written nothing, so the sales it would write are left out of the aggregates and added here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterable

from lspos_sync.mapping import ROLLUP_FIELDS, SALE_KEY, TRANSACTION, money, salesforce_datetime
from lspos_sync.salesforce.queries import MAX_SOQL, literal

FIELDS = SPEND, COUNT, FIRST, LAST = ROLLUP_FIELDS
# At most two groups (Completed, Refund) per account, and an aggregate query returns at most 2,000 rows
# with no further pages.
ACCOUNTS_PER_QUERY = 1000


@dataclass(frozen=True)
class Contribution:
    """One transaction as it counts towards its account's roll-ups."""

    status: str
    total: float
    date: str | None  # Transaction_Date__c


def aggregate_statements(account_ids: list[str], excluded: dict[str, list[str]] | None = None,
                         limit: int = MAX_SOQL, fields: tuple[str, ...] = FIELDS) -> list[list[str]]:
    """Per chunk of accounts, the aggregate statement (plus, in a dry-run, the sale keys left out of it) and the
    statement reading the accounts' current values of `fields`, each at most `limit` characters long."""
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for account_id in account_ids:
        cost = 22 + sum(len(key) + 3 for key in (excluded or {}).get(account_id, ()))
        if current and (len(current) >= ACCOUNTS_PER_QUERY or size + cost > limit - 400):
            chunks.append(current)
            current, size = [], 0
        current.append(account_id)
        size += cost
    if current:
        chunks.append(current)
    statements = []
    for chunk in chunks:
        where = (f"Account__c IN ({','.join(literal(i) for i in chunk)}) "
                 "AND Status__c IN ('Completed','Refund')")
        keys = [key for account_id in chunk for key in (excluded or {}).get(account_id, ())]
        if keys:
            where += f" AND {SALE_KEY} NOT IN ({','.join(literal(k) for k in dict.fromkeys(keys))})"
        statements.append([
            f"SELECT Account__c, Status__c, SUM(Total__c) spend, COUNT(Id) n, MIN(Transaction_Date__c) earliest, "
            f"MAX(Transaction_Date__c) latest FROM {TRANSACTION} WHERE {where} GROUP BY Account__c, Status__c",
            f"SELECT Id, {', '.join(fields)} FROM Account WHERE Id IN ({','.join(literal(i) for i in chunk)})",
        ])
    return statements


def values(groups: Iterable[dict[str, Any]], extra: Iterable[Contribution] = ()) -> dict[str, Any]:
    """The four fields from an account's aggregate groups, plus contributions not yet in Salesforce."""
    spend, count, first, last = Decimal(0), 0, None, None
    rows = [(g.get("Status__c"), Decimal(str(g.get("spend") or 0)), int(g.get("n") or 0), g.get("earliest"),
             g.get("latest")) for g in groups]
    rows += [(c.status, Decimal(str(c.total)), 1, c.date, c.date) for c in extra]
    for status, total, number, earliest, latest in rows:
        if status not in ("Completed", "Refund"):
            continue
        spend += total
        if status == "Completed":
            count += number
            first = _earlier(first, earliest)
            last = _later(last, latest)
    return {SPEND: money(spend), COUNT: count, FIRST: _iso(first), LAST: _iso(last)}


def changed(current: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields of `new` whose value moves, as (before, after); datetimes compared as instants, numbers as
    numbers."""
    moves = {}
    for name in new:
        before = (current or {}).get(name)
        after = new[name]
        if name in (FIRST, LAST):
            same = _moment(before) == _moment(after)
        elif name == SPEND:
            same = before is not None and money(Decimal(str(before))) == after
        else:
            same = before is not None and int(before) == after
        if not same:
            moves[name] = (before, after)
    return moves


def _moment(value: Any) -> datetime | None:
    if not value:
        return None
    moment = datetime.fromisoformat(str(value))  # Salesforce writes ...000+0000, we write ...Z
    return moment.replace(tzinfo=moment.tzinfo or timezone.utc).astimezone(timezone.utc)


def _iso(value: Any) -> str | None:
    return salesforce_datetime(_moment(value))


def _earlier(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and _moment(b) < _moment(a)) else a


def _later(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and _moment(b) > _moment(a)) else a
