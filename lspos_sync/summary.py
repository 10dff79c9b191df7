"""What a run did, as it goes and at its end: the counts, the sales that need attention, and (dry-run) the line
an admin reads per sale; `summary_dict` is the run's JSON result."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lspos_sync.state import iso


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime


@dataclass(slots=True)
class SalePlan:
    """What happened (or, in dry-run, would happen) to one sale: the line an admin reads."""

    sale_id: int
    sale_key: str
    ticket: str
    status: str
    total: float
    lines: int
    match: str
    account_id: str | None
    reason: str
    action: str  # create, update, unchanged, rejected
    error: str | None = None
    added: dict[str, Any] | None = None  # the transaction's fields added by the mapping file, by org name

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass
class RunSummary:
    command: str
    account_id: str
    window: Window | None
    sales_read: int = 0
    written: int = 0
    unchanged: int = 0
    skipped_open: int = 0
    records: dict[str, int] = field(default_factory=dict)
    # by sale key, the sales parked as last tried: one written after it was parked in the run (a sale read again in
    # the window's pages; a parked sale retried first is not, the pages skip it) is not parked any more, and leaves it
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)
    # by sale key, so that a sale read twice in a run (look-back, void feed, re-read page) is named once, as last read
    ambiguous: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps: dict[str, dict[str, Any]] = field(default_factory=dict)  # sales written with data Lightspeed did not send
    enriched: list[dict[str, Any]] = field(default_factory=list)  # accounts whose empty fields were filled
    rollups: dict[str, Any] | None = None  # LSPOS_ROLLUPS: accounts recomputed, updated, their changes
    plans: list[SalePlan] = field(default_factory=list)
    progress: datetime | None = None  # every sale changed up to here is written or parked
    retried: int = 0
    customers: dict[str, Any] | None = None  # LSPOS_SYNC_CUSTOMERS: the customer feed's report (customer_feed.py)

    def parked(self, sale_key: str, sale_id: int, reason: str) -> None:
        self.rejected[sale_key] = {"sale_key": sale_key, "sale_id": sale_id, "reason": reason}

    def wrote(self, sale_key: str) -> None:
        self.written += 1
        self.rejected.pop(sale_key, None)

    @property
    def exit_code(self) -> int:
        return 3 if self.rejected or (self.rollups and self.rollups["rejected"]) or (
            self.customers and self.customers["rejected_customers"]) else 0


def summary_dict(summary: RunSummary, *, include_plans: bool) -> dict[str, Any]:
    rejected = list(summary.rejected.values())
    result: dict[str, Any] = {
        "command": summary.command,
        "account_id": summary.account_id,
        "window": {"from": iso(summary.window.since), "to": iso(summary.window.until)} if summary.window else None,
        "sales": {"read": summary.sales_read, "written": summary.written, "unchanged": summary.unchanged,
                  "rejected": len(rejected), "skipped_open": summary.skipped_open,
                  "retried": summary.retried},
        "records": summary.records,
        "ambiguous": list(summary.ambiguous.values()),
        "gaps": list(summary.gaps.values()),
        "enriched": summary.enriched,
        "rollups": summary.rollups,
        "customers": summary.customers,
        "rejected": rejected,
        # only sync moves the checkpoint; a backfill's progress is its own resume point
        "checkpoint": iso(summary.progress) if summary.progress and summary.command == "sync" else None,
    }
    if include_plans:
        result["plans"] = [plan.as_dict() for plan in summary.plans]
    return result
