"""`lspos-sync status`: the recent runs, the checkpoint lag and the parked rejects, read from the state store,
with an exit code a monitoring check can act on."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from lspos_sync.config import Settings
from lspos_sync.errors import LockHeld
from lspos_sync.lightspeed.client import CLOCK_TOLERANCE
from lspos_sync.mapping import ACCOUNT, LINE, TRANSACTION
from lspos_sync.writing import CREATE_ACCOUNTS, DELETE_LINES, LINES, TRANSACTIONS, UPDATE_ACCOUNTS
from lspos_sync.state import StateStore, parse_iso, utcnow

if TYPE_CHECKING:
    from lspos_sync.output import Output

RECENT_RUNS = 5
WRITING_COMMANDS = ("sync", "backfill")
# The run summary counts records by kind of write; status reports them by Salesforce object.
# Accounts created and accounts updated (a key stamped, empty fields filled) are told apart; older state
# files name the update kind "stamp_accounts".
_WRITTEN_OBJECT = {CREATE_ACCOUNTS: f"{ACCOUNT} created", UPDATE_ACCOUNTS: f"{ACCOUNT} updated",
                   "stamp_accounts": f"{ACCOUNT} updated", TRANSACTIONS: TRANSACTION, LINES: LINE}
_DELETED_OBJECT = {DELETE_LINES: LINE}


def report(settings: Settings, output: "Output", max_lag_minutes: int | None) -> int:
    """Prints the status; 1 when the last sync or backfill failed or the lag is over `max_lag_minutes`."""
    now = utcnow()
    runs: list[dict[str, Any]] = []
    last_runs: list[dict[str, Any]] = []  # the last sync or backfill of each account (of all, when none is set)
    checkpoints: dict[str, dict[str, str | None]] = {}
    ahead: dict[str, timedelta] = {}  # the host's clock minus Lightspeed's, as each account's last run found it
    parked = 0
    customers_parked = 0  # LSPOS_SYNC_CUSTOMERS: customers Salesforce refused, retried by every run with the feed on
    # A state file that does not exist yet means nothing has run; status does not create one.
    if settings.state_path.exists():
        with StateStore(settings.state_path) as store:
            runs = [_run(row) for row in store.recent_runs(RECENT_RUNS)]
            for account_id in settings.account_ids or [None]:
                last_runs += [_run(row) for row in store.recent_runs(1, WRITING_COMMANDS, account_id)]
            checkpoints = store.checkpoints()
            ahead = {account_id: store.host_clock_ahead(account_id) for account_id in checkpoints}
            # the configured accounts' parked sales and customers, or every account's (None) when none is named
            parked = sum(len(store.rejects(i)) for i in settings.account_ids or [None])
            customers_parked = sum(len(store.customer_rejects(i)) for i in settings.account_ids or [None])
    if settings.account_ids:
        checkpoints = {i: checkpoints.get(i) or {"cursor": None, "updated_at": None} for i in settings.account_ids}

    # The checkpoint is on Lightspeed's clock, so the lag is too: the host's now, less how far it runs ahead.
    accounts = {account_id: {**cursor, "lag_minutes": lag_minutes(now, ahead.get(account_id, timedelta(0)),
                                                                  parse_iso(cursor["cursor"]))}
                for account_id, cursor in checkpoints.items()}
    problems = []
    for last in last_runs:
        whose = f" of account {last['account_id']}" if settings.several_accounts else ""
        if last["outcome"] == "failed":
            problems.append(f"the last {last['command']}{whose} (started {last['started_at']}) failed: "
                            f"{last['error'] or 'no reason recorded'}")
        elif last["outcome"] in ("interrupted", "running") and not _still_running(settings, last["account_id"]):
            problems.append(f"the last {last['command']}{whose} (started {last['started_at']}) "
                            "was killed before it finished")
    for account_id, account in accounts.items():
        if account["lag_minutes"] is not None and account["lag_minutes"] < 0:
            problems.append(f"account {account_id}: the checkpoint is in the future ({account['cursor']}) on "
                            "Lightspeed's clock; the next sync reads from Lightspeed's now and sets it back, or set "
                            "it with `lspos-sync checkpoint reset --to WHEN`")
    if max_lag_minutes is not None:
        if not accounts:
            problems.append("no checkpoint yet: no sync has completed")
        for account_id, account in accounts.items():
            if account["lag_minutes"] is None:
                problems.append(f"account {account_id} has no checkpoint yet: no sync has completed")
            elif account["lag_minutes"] > max_lag_minutes:
                problems.append(f"account {account_id}: the checkpoint is {account['lag_minutes']} minutes old, "
                                f"over --max-lag-minutes {max_lag_minutes}")
    exit_code = 1 if problems else 0
    data = {"command": "status", "outcome": "failed" if problems else "ok", "exit_code": exit_code,
            "problems": problems, "state_path": str(settings.state_path), "checkpoints": accounts,
            "max_lag_minutes": max_lag_minutes, "rejected_parked": parked,
            "customers_parked": customers_parked,
            "last_run": max(last_runs, key=lambda run: run["id"]) if last_runs else None,
            "last_runs": {run["account_id"]: run for run in last_runs} if settings.several_accounts else None,
            "runs": runs}
    output.result(data, _lines(data, output, settings.sync_customers))
    return exit_code


def _run(row: dict[str, Any]) -> dict[str, Any]:
    """One run as status reports it, from its row and the summary run.py recorded."""
    summary = row["summary"] or {}
    started, ended = parse_iso(row["started_at"]), parse_iso(row["ended_at"])
    sales = summary.get("sales") or {}
    records = summary.get("records") or {}
    written: dict[str, int] = {}
    deleted: dict[str, int] = {}
    for kind, count in records.items():
        if kind in _DELETED_OBJECT:
            deleted[_DELETED_OBJECT[kind]] = deleted.get(_DELETED_OBJECT[kind], 0) + count
        else:
            name = _WRITTEN_OBJECT.get(kind, kind)
            written[name] = written.get(name, 0) + count
    return {
        "id": row["id"], "command": row["command"], "account_id": row["account_id"],
        "started_at": row["started_at"], "ended_at": row["ended_at"],
        "duration_seconds": round((ended - started).total_seconds(), 1) if started and ended else None,
        "outcome": row["outcome"], "exit_code": row["exit_code"],
        "window": {"from": row["window_from"], "to": row["window_to"]},
        "sales": {"read": sales.get("read"), "written": sales.get("written"), "rejected": sales.get("rejected")},
        "records_written": written, "records_deleted": deleted,
        "salesforce_api_calls": summary.get("salesforce_api_calls"),
        "lightspeed_requests": summary.get("lightspeed_requests"),
        "error": summary.get("error"),
    }


def lag_minutes(now: datetime, host_ahead: timedelta, cursor: datetime | None) -> int | None:
    """Minutes since the checkpoint, on Lightspeed's clock (the host's `now` less how far it ran ahead);
    negative when the checkpoint lies in the future (set by hand, or by a version that trusted a host clock
    running ahead). The host's lead is known only to the whole second of Lightspeed's `Date` header, plus the
    response's travel, so a checkpoint less than `CLOCK_TOLERANCE` ahead is a lag of 0, not a future one."""
    if cursor is None:
        return None
    lag = now - host_ahead - cursor
    if -CLOCK_TOLERANCE <= lag < timedelta(0):
        return 0
    return int(lag.total_seconds() // 60)


def _still_running(settings: Settings, account_id: str | None) -> bool:
    """Whether a run holds the lock now: a run row still marked running is then alive, not killed."""
    store = StateStore(settings.state_path)
    try:
        store.acquire_lock(account_id or settings.account_id)
    except LockHeld:
        return True
    finally:
        store.close()
    return False


def _ago(minutes: int) -> str:
    if minutes == 0:
        return "less than a minute"
    if minutes < 120:
        return f"{minutes} minute{'' if minutes == 1 else 's'}"
    if minutes < 48 * 60:
        return f"{minutes // 60} hours"
    return f"{minutes // (24 * 60)} days"


def _lines(data: dict[str, Any], output: "Output", customer_feed: bool) -> list[str]:
    """The text report; the parked customers' line only with the customer feed on, or when some are parked."""
    lines = []
    for account_id, account in data["checkpoints"].items():
        if account["cursor"] is None:
            lines.append(f"account {account_id}: no checkpoint yet (no sync has completed)")
        elif account["lag_minutes"] < 0:
            lines.append(f"account {account_id}: checkpoint in the future ({account['cursor']})")
        else:
            lines.append(f"account {account_id}: sales synced up to {_ago(account['lag_minutes'])} ago "
                         f"(checkpoint {account['cursor']})")
    if not data["checkpoints"]:
        lines.append("no checkpoint yet (no sync has completed)")
    lines.append(f"rejected sales parked: {data['rejected_parked']}"
                 + (" (retried by every run)" if data["rejected_parked"] else ""))
    if data["customers_parked"] or customer_feed:
        lines.append(f"rejected customers parked: {data['customers_parked']}"
                     + (" (retried by every run with LSPOS_SYNC_CUSTOMERS on)" if data["customers_parked"] else ""))
    if not data["runs"]:
        lines.append(f"runs: none recorded in {data['state_path']}")
    elif output.fancy and not output.as_json:
        _table(data["runs"])
    else:
        lines.append("last runs, newest first:")
        lines.extend(f"  {_run_line(run, data['last_runs'] is not None)}" for run in data["runs"])
    lines.extend(f"problem: {problem}" for problem in data["problems"])
    lines.append(f"status: {'FAILING' if data['problems'] else 'OK'}")
    return lines


def _run_line(run: dict[str, Any], with_account: bool = False) -> str:
    duration = f" in {run['duration_seconds']} s" if run["duration_seconds"] is not None else ""
    exit_code = f" (exit {run['exit_code']})" if run["exit_code"] is not None else ""
    line = f"{run['started_at']} {run['command']}" + (f" account {run['account_id']}" if with_account else "") \
        + f" {run['outcome']}{exit_code}{duration}"
    sales = run["sales"]
    if sales["read"] is not None:
        line += f": {sales['read']} sale(s) read, {sales['written']} written, {sales['rejected']} rejected"
    if run["records_written"] or run["records_deleted"]:
        line += f"; records {_records(run)}"
    if run["salesforce_api_calls"] is not None:
        line += f"; {run['salesforce_api_calls']} Salesforce call(s), {run['lightspeed_requests']} Lightspeed request(s)"
    return f"{line}; error: {run['error']}" if run["error"] else line


def _records(run: dict[str, Any]) -> str:
    written = ", ".join(f"{name} {count}" for name, count in run["records_written"].items())
    deleted = ", ".join(f"{count} {name} deleted" for name, count in run["records_deleted"].items())
    return f"{written} ({deleted})" if written and deleted else written or deleted


def _table(runs: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="last runs, newest first (UTC)")
    for column in ("started", "command", "outcome", "exit", "seconds", "read", "written", "rejected", "records",
                   "SF calls", "LS requests"):
        table.add_column(column)
    for run in runs:
        table.add_row(*(("" if value is None else str(value)) for value in (
            run["started_at"][:19].replace("T", " "), run["command"], run["outcome"] if not run["error"] else f"{run['outcome']}: {run['error']}",
            run["exit_code"], run["duration_seconds"], run["sales"]["read"], run["sales"]["written"],
            run["sales"]["rejected"], _records(run), run["salesforce_api_calls"], run["lightspeed_requests"])))
    Console(stderr=True).print(table)
