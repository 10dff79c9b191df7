"""The three ways of running the engine (sync, backfill, dry-run): collaborators, lock, run record, report."""

from __future__ import annotations

import gc
import logging
from contextlib import ExitStack
from datetime import datetime
from typing import TYPE_CHECKING, Callable

import httpx

from lspos_sync.config import Settings
from lspos_sync.engine import Engine, RunSummary, Window, summary_dict
from lspos_sync.errors import ConfigError, SyncError
from lspos_sync.lightspeed.auth import LightspeedAuth
from lspos_sync.lightspeed.client import LightspeedClient
from lspos_sync.output import RUN
from lspos_sync.salesforce.client import SalesforceClient
from lspos_sync.salesforce.writer import CompositeWriter, RecordingSink
from lspos_sync.state import StateStore, iso, utcnow

if TYPE_CHECKING:
    from lspos_sync.output import Output

log = logging.getLogger(__name__)


def incremental(settings: Settings, output: "Output") -> int:
    """`sync`: from the checkpoint minus the look-back (or LSPOS_SYNC_START) up to the run's start."""
    _require(settings)
    with StateStore(settings.state_path) as store:
        store.acquire_lock()
        started = utcnow()
        checkpoint = store.checkpoint(settings.account_id)
        window = Window(_sync_start(settings, checkpoint, started), started)
        # A checkpoint later than now (the host clock went back) is not a floor: this run may set it back.
        floor = min(checkpoint, started) if checkpoint else None

        def advance(moment: datetime) -> None:
            nonlocal floor
            if floor is None or moment > floor:  # progress inside the look-back never moves it back
                store.set_checkpoint(settings.account_id, moment)
                floor = moment

        return _execute("sync", settings, output, store, window, progress=advance)


def bounded(settings: Settings, output: "Output", since: datetime, until: datetime | None) -> int:
    """`backfill`: an explicit window, written like any other; the live checkpoint is left alone. A window
    that stopped part-way (an outage, the API reserve) resumes where it stopped when run again."""
    _require(settings)
    with StateStore(settings.state_path) as store:
        store.acquire_lock()
        name = f"{iso(since)}/{iso(until) if until else 'now'}"
        resume = store.backfill_progress(settings.account_id, name)
        if resume is not None:
            log.warning("backfill %s resumes from %s, where it stopped", name, iso(resume))
        window = Window(max(since, resume or since), min(until or utcnow(), utcnow()))

        def advance(moment: datetime) -> None:
            if moment >= window.until:
                store.clear_backfill_progress(settings.account_id, name)
            else:
                store.set_backfill_progress(settings.account_id, name, moment)

        return _execute("backfill", settings, output, store, window, progress=advance)


def retry_parked(settings: Settings, output: "Output", sale_keys: tuple[str, ...]) -> int:
    """`rejects retry`: the parked sales given (all of them when none is), written again now."""
    _require(settings)
    with StateStore(settings.state_path) as store:
        store.acquire_lock()
        parked = {r.sale_key: r.sale_id for r in store.rejects(settings.account_id)}
        unknown = [key for key in sale_keys if key not in parked]
        if unknown:
            raise ConfigError(f"not a parked sale of account {settings.account_id}: {', '.join(unknown)} "
                              "(see `lspos-sync rejects list`)")
        sale_ids = [parked[key] for key in (sale_keys or parked)]
        return _execute("rejects retry", settings, output, store, None, retry=sale_ids)


def preview(settings: Settings, output: "Output", since: datetime | None, until: datetime | None,
            limit: int | None) -> int:
    """`dry-run`: reads both systems, writes to neither (nor to the checkpoint)."""
    _require(settings)
    with StateStore(settings.state_path) as store:
        now = utcnow()
        window = Window(since or _sync_start(settings, store.checkpoint(settings.account_id), now),
                        min(until or now, now))
        return _execute("dry-run", settings, output, store, window, limit=limit)


def _require(settings: Settings) -> None:
    settings.require_lightspeed()
    settings.require_salesforce()


def _sync_start(settings: Settings, checkpoint: datetime | None, now: datetime) -> datetime:
    if checkpoint is not None:
        if checkpoint > now:
            log.warning("the checkpoint %s is later than now: is the host clock right? reading from now", iso(checkpoint))
        return min(checkpoint, now) - settings.lookback
    if settings.sync_start is not None:
        return settings.sync_start
    raise ConfigError(
        "no checkpoint yet: set LSPOS_SYNC_START to where the first sync starts (e.g. LSPOS_SYNC_START=2026-03-01), "
        "or run `lspos-sync checkpoint reset --to WHEN --yes`")


def _execute(command: str, settings: Settings, output: "Output", store: StateStore, window: Window | None, *,
             progress: Callable[[datetime], None] | None = None, limit: int | None = None,
             retry: list[int] | None = None) -> int:
    # Everything imported so far lives for the whole run: out of the garbage collector's way.
    gc.freeze()
    dry_run = command == "dry-run"
    run_id = None if dry_run else store.start_run(command, settings.account_id, window and window.since,
                                                  window and window.until)
    RUN["id"] = run_id
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(timeout=httpx.Timeout(120.0, connect=20.0)))
        auth = LightspeedAuth(http, store, settings.account_id, settings.lightspeed_token_url,
                              settings.client_id or "", settings.client_secret or "", settings.refresh_token)
        lightspeed = LightspeedClient(http, settings.lightspeed_api_url, settings.account_id, auth)
        salesforce = SalesforceClient(settings.salesforce, reserve_percent=settings.api_reserve_percent)
        sink = RecordingSink() if dry_run else CompositeWriter(salesforce)
        spinner = stack.enter_context(_Progress(output, command))
        engine = Engine(settings.account_id, store, lightspeed, salesforce, sink, dry_run=dry_run,
                        phone_region=settings.phone_region, person_record_type=settings.person_account_record_type,
                        verify_unchanged=command == "backfill", enrich_profiles=settings.enrich_profiles,
                        on_batch=spinner.advance)
        try:
            if window is None:
                summary = engine.retry(retry or [])
            else:
                summary = engine.run(command, window, progress=progress, limit=limit)
        except Exception as error:
            if run_id is not None:
                code = error.exit_code if isinstance(error, SyncError) else 1
                store.finish_run(run_id, "failed", code, {
                    "error": output.mask(str(error)), "salesforce_api_calls": salesforce.api_calls,
                    "lightspeed_requests": lightspeed.requests})
            raise
    data = summary_dict(summary, include_plans=dry_run)
    data.update({"outcome": "rejected" if summary.rejected else "ok", "exit_code": summary.exit_code,
                 "salesforce_api_calls": salesforce.api_calls, "lightspeed_requests": lightspeed.requests,
                 "lightspeed_throttled": lightspeed.throttled, "dry_run": dry_run})
    if run_id is not None:
        store.finish_run(run_id, data["outcome"], summary.exit_code, data)
    output.result(data, _report(summary, data, output))
    return summary.exit_code


def _report(summary: RunSummary, data: dict, output: "Output") -> list[str]:
    """The plain report: for dry-run one line per sale, then one summary line; rejects and ambiguous sales
    listed so the operator sees exactly which sales need attention."""
    lines = []
    if summary.command == "dry-run":
        if output.fancy and not output.as_json:
            _table(summary)
        else:
            for plan in summary.plans:
                account = f" -> {plan.account_id}" if plan.account_id else ""
                lines.append(f"sale {plan.sale_id} ({plan.sale_key}) {plan.action}: {plan.status} total {plan.total:.2f}, "
                             f"{plan.lines} line(s), customer {plan.match}{account}"
                             + (f" ({plan.reason})" if plan.reason else ""))
    for reject in summary.rejected:
        output.note(f"rejected {reject['sale_key']}: {reject['reason']}")
    for sale in summary.ambiguous:
        output.note(f"ambiguous {sale['sale_key']}: {sale['reason']} (candidates {', '.join(sale['candidates'])}); "
                    "written without an account")
    for account in summary.enriched:
        output.note(f"{'would fill' if summary.command == 'dry-run' else 'filled'} empty fields of account "
                    f"{account['account_id']} ({account['customer_key']}): {', '.join(account['fields'])}")
    verb = "would write" if summary.command == "dry-run" else "written"
    window = f"{iso(summary.window.since)} .. {iso(summary.window.until)}" if summary.window else ""
    lines.append(
        f"{summary.command} account {summary.account_id} [{window}]: {summary.sales_read} sale(s) read, "
        f"{summary.written} {verb}, {summary.unchanged} unchanged, {len(summary.rejected)} rejected, "
        f"{len(summary.ambiguous)} ambiguous; {data['salesforce_api_calls']} Salesforce call(s), "
        f"{data['lightspeed_requests']} Lightspeed request(s)"
        + (f"; checkpoint {data['checkpoint']}" if data["checkpoint"] else ""))
    return lines


def _table(summary: RunSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dry-run: account {summary.account_id}")
    for column in ("sale", "ticket", "action", "status", "total", "lines", "customer", "account", "why"):
        table.add_column(column)
    for plan in summary.plans:
        table.add_row(str(plan.sale_id), plan.ticket, plan.action, plan.status, f"{plan.total:.2f}", str(plan.lines),
                      plan.match, plan.account_id or "", plan.reason)
    Console(stderr=True).print(table)


class _Progress:
    """A rich progress line on a terminal; nothing at all under cron."""

    def __init__(self, output: "Output", command: str) -> None:
        self._enabled = output.fancy
        self._command = command
        self._status = None
        self._count = 0

    def __enter__(self) -> "_Progress":
        if self._enabled:
            from rich.console import Console

            self._status = Console(stderr=True).status(f"{self._command}: reading Lightspeed…")
            self._status.__enter__()
        return self

    def advance(self, sales: int) -> None:
        self._count += sales
        if self._status is not None:
            self._status.update(f"{self._command}: {self._count} sale(s) processed…")

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(None, None, None)
