"""The three ways of running the engine (sync, backfill, dry-run): collaborators, lock, run record, report."""

from __future__ import annotations

import logging
import re
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from lspos_sync import customer_feed, fieldmap
from lspos_sync.config import Settings
from lspos_sync.engine import Engine, RunSummary, Window, summary_dict
from lspos_sync.errors import ConfigError, SyncError
from lspos_sync.lightspeed.auth import LightspeedAuth
from lspos_sync.lightspeed.client import CLOCK_TOLERANCE, LightspeedClient, http_client
from lspos_sync.output import RUN
from lspos_sync.resolving import Foreseen
from lspos_sync.salesforce.client import SalesforceClient
from lspos_sync.salesforce.writer import CompositeWriter, RecordingSink
from lspos_sync.state import StateStore, iso

if TYPE_CHECKING:
    from lspos_sync.output import Output
    from lspos_sync.progress import Spinner, WindowBar

log = logging.getLogger(__name__)


@dataclass
class Report:
    """One account's run, as printed: the JSON object, the plain lines, the exit code."""

    data: dict[str, Any]
    lines: list[str]
    exit_code: int


def incremental(settings: Settings, output: "Output", account: str | None = None) -> int:
    """`sync`: from the checkpoint minus the look-back (or LSPOS_SYNC_START) up to the run's start, on
    Lightspeed's clock."""

    def one(settings: Settings) -> Report:
        with StateStore(settings.state_path) as store:
            store.acquire_lock(settings.account_id)
            checkpoint = store.checkpoint(settings.account_id)
            start = _sync_start(settings, checkpoint)
            floor = checkpoint

            def window(now: datetime) -> Window:
                nonlocal floor
                # A checkpoint later than Lightspeed's now is not a floor: this run may set it back.
                floor = min(checkpoint, now) if checkpoint else None
                return Window(start(now), now)

            def advance(moment: datetime) -> None:
                nonlocal floor
                if floor is None or moment > floor:  # progress inside the look-back never moves it back
                    store.set_checkpoint(settings.account_id, moment)
                    floor = moment

            return _execute("sync", settings, output, store, window, progress=advance)

    return each_account("sync", settings, output, account, one)


def bounded(settings: Settings, output: "Output", since: datetime, until: datetime | None,
            account: str | None = None, bulk: bool | None = None) -> int:
    """`backfill`: an explicit window, written like any other; the live checkpoint is left alone. A window
    that stopped part-way (an outage, the API reserve) resumes where it stopped when run again. `bulk`:
    through Bulk API 2.0 ingest jobs, or not; None lets the window's sale count decide (LSPOS_BULK_THRESHOLD)."""

    def one(settings: Settings) -> Report:
        with StateStore(settings.state_path) as store:
            store.acquire_lock(settings.account_id)
            name = f"{iso(since)}/{iso(until) if until else 'now'}"
            resume = store.backfill_progress(settings.account_id, name)
            if resume is not None:
                log.warning("backfill %s of account %s resumes from %s, where it stopped", name,
                            settings.account_id, iso(resume))
            end = until  # the window's end, once Lightspeed's clock is read

            def window(now: datetime) -> Window:
                nonlocal end
                end = min(until or now, now)
                _from_before(since, now)
                return Window(max(since, resume or since), end)

            def advance(moment: datetime) -> None:
                if end is not None and moment >= end:
                    store.clear_backfill_progress(settings.account_id, name)
                else:
                    store.set_backfill_progress(settings.account_id, name, moment)

            return _execute("backfill", settings, output, store, window, progress=advance, bulk=bulk)

    return each_account("backfill", settings, output, account, one)


def retry_parked(settings: Settings, output: "Output", sale_keys: tuple[str, ...]) -> int:
    """`rejects retry`: the parked sales given (all of them when none is), written again now."""
    malformed = [key for key in sale_keys if not re.fullmatch(r"\d+-\d+", key)]
    if malformed:
        raise ConfigError(f"not a sale key: {', '.join(malformed)} (a key is <accountID>-<saleID>, e.g. 182255-1042; "
                          "see `lspos-sync rejects list`)")
    unknown = [key for key in sale_keys if key.split("-", 1)[0] not in settings.account_ids]
    if unknown:
        raise ConfigError(f"not a parked sale of {', '.join(settings.account_ids) or 'a configured account'}: "
                          f"{', '.join(unknown)} (see `lspos-sync rejects list`)")

    def one(settings: Settings) -> Report | None:
        mine = tuple(key for key in sale_keys if key.startswith(f"{settings.account_id}-"))
        if sale_keys and not mine:
            return None  # the keys given are all another account's
        with StateStore(settings.state_path) as store:
            store.acquire_lock(settings.account_id)
            parked = {r.sale_key: r.sale_id for r in store.rejects(settings.account_id)}
            unknown = [key for key in mine if key not in parked]
            if unknown:
                raise ConfigError(f"not a parked sale of account {settings.account_id}: {', '.join(unknown)} "
                                  "(see `lspos-sync rejects list`)")
            sale_ids = [parked[key] for key in (mine or parked)]
            return _execute("rejects retry", settings, output, store, None, retry=sale_ids)

    return each_account("rejects retry", settings, output, None, one)


def preview(settings: Settings, output: "Output", since: datetime | None, until: datetime | None,
            limit: int | None, account: str | None = None) -> int:
    """`dry-run`: reads both systems, writes to neither (nor to the checkpoint). The account writes it would
    make carry from one account of LIGHTSPEED_ACCOUNTS to the next, as a sync's do (`foreseen`)."""
    foreseen = Foreseen(settings.phone_region)

    def one(settings: Settings) -> Report:
        with StateStore(settings.state_path) as store:
            start = _sync_start(settings, store.checkpoint(settings.account_id)) if since is None else lambda now: since

            def window(now: datetime) -> Window:
                begin, end = start(now), min(until or now, now)
                if since is not None:
                    _from_before(since, now)
                elif until is not None and begin > end:  # --to alone, before where the next sync starts
                    raise ConfigError(f"--to ({iso(until)}) is before the window's start ({iso(begin)}, where the "
                                      "next sync starts); give --from as well")
                return Window(begin, end)

            # With --from it previews a backfill of the window: a sale unchanged since its last write is looked up
            # in Salesforce, so that one deleted there by hand shows as restored, as the backfill restores it.
            return _execute("dry-run", settings, output, store, window, limit=limit, as_backfill=since is not None,
                            foreseen=foreseen)

    return each_account("dry-run", settings, output, account, one, locking=False)


def each_account(command: str, settings: Settings, output: "Output", account: str | None,
                 one: Callable[[Settings], Report | None], locking: bool = True) -> int:
    """Runs `one` for the account given, or for every configured account in turn, and prints the result.

    With one account (LIGHTSPEED_ACCOUNT_ID) the report is that account's, and a failure is the command's.
    With LIGHTSPEED_ACCOUNTS, a writing command (`locking`) first takes every chosen account's lock (another run holding
    one: exit 4 at once, nothing done); then each account runs even when another failed, and the report
    lists them: the exit code is 1 if any failed, else 2 if any was misconfigured, else 3 if any had
    rejected records, else 0."""
    if not settings.several_accounts:
        settings.require_lightspeed()  # (with several, each account's own variables are checked as it runs)
    settings.require_salesforce()
    selected = [account] if account else settings.account_ids
    chosen = [settings.for_account(account_id) for account_id in selected]  # an unknown --account: exit 2 here
    if not settings.several_accounts:
        report = one(chosen[0])
        if report is None:
            raise ConfigError(f"nothing to do for account {chosen[0].account_id}")
        output.result(report.data, report.lines)
        return report.exit_code

    def configured(account_settings: Settings) -> Report | None:
        # An account's own variables (its client) are its own failure: the other accounts still run.
        settings.require_lightspeed(account_settings.account_id)
        return one(account_settings)

    with StateStore(settings.state_path) as locks:
        if locking:
            for account_settings in chosen:
                locks.acquire_lock(account_settings.account_id)
        reports = [report for account_settings in chosen
                   if (report := _one_of_several(command, account_settings, output, configured)) is not None]
    codes = {report.exit_code for report in reports}
    code = next((c for c in (1, 2, 3) if c in codes), 0)
    outcome = {0: "ok", 1: "failed", 2: "failed", 3: "rejected"}[code]
    output.result({"command": command, "outcome": outcome, "exit_code": code,
                   "accounts": [report.data for report in reports]},
                  [line for report in reports for line in report.lines])
    return code


def _one_of_several(command: str, settings: Settings, output: "Output",
                    one: Callable[[Settings], Report | None]) -> Report | None:
    """One account of LIGHTSPEED_ACCOUNTS: its report, or its failure as a report, so the others still run."""
    try:
        return one(settings)
    except SyncError as error:
        message = output.mask(str(error))
        output.note(f"account {settings.account_id}: Error: {message}")
        return Report({"command": command, "account_id": settings.account_id, "outcome": "failed",
                       "exit_code": error.exit_code, "error": message},
                      [f"{command} account {settings.account_id}: failed: {message}"], error.exit_code)


def _from_before(since: datetime, now: datetime) -> None:
    """--from must not lie after Lightspeed's now (--from after --to is refused before anything is read). A second
    or so over is a --from of the host's now: Date has whole seconds."""
    if since > now + CLOCK_TOLERANCE:
        raise ConfigError(f"--from ({iso(since)}) is after Lightspeed's now ({iso(now)})")


def check_org_mapping(settings: Settings, output: "Output") -> int:
    """`mapping check`: the effective mapping against the org, without reading Lightspeed."""
    settings.require_salesforce()
    names = fieldmap.for_settings(settings)
    salesforce = SalesforceClient(settings.salesforce, field_map=names)
    fieldmap.check_org(settings, names, salesforce.describe)
    checked = fieldmap.written_fields(settings, names)
    count = sum(len(fields) for fields in checked.values()) + sum(len(a) for a in names.additions.values())
    output.result({"mapping": str(names.source) if names.source else None, "ok": True, "fields_checked": count,
                   "objects": {obj: names.obj(obj) for obj in checked}, "salesforce_api_calls": salesforce.api_calls},
                  [f"mapping {names.source or '(contract defaults)'}: {count} field(s) on "
                   f"{', '.join(names.obj(obj) for obj in checked)} fit the org"])
    return 0


_DATE_RESOLUTION = timedelta(seconds=1)


def _sync_start(settings: Settings, checkpoint: datetime | None) -> Callable[[datetime], datetime]:
    """Where a sync starts, given Lightspeed's now: the checkpoint minus the look-back, else LSPOS_SYNC_START;
    without either, a configuration error before anything is read."""
    if checkpoint is not None:
        def start(now: datetime) -> datetime:
            # Set by hand, or by a version that trusted a host clock running ahead. Within a second it is the
            # `Date` header's resolution (two runs in one second), not worth a warning.
            if checkpoint > now + _DATE_RESOLUTION:
                log.warning("the checkpoint %s is later than Lightspeed's clock (%s): reading from Lightspeed's now",
                            iso(checkpoint), iso(now))
            return min(checkpoint, now) - settings.lookback
        return start
    if settings.sync_start is not None:
        sync_start = settings.sync_start

        def first(now: datetime) -> datetime:
            # A start still to come (2062 for 2026) would read nothing and set the checkpoint to now, past every sale
            # since the start meant. Within CLOCK_TOLERANCE it is the host's now, as for `--from`.
            if sync_start > now + CLOCK_TOLERANCE:
                raise ConfigError(f"LSPOS_SYNC_START ({iso(sync_start)}) is after Lightspeed's now ({iso(now)}): "
                                  "set it to where the first sync starts")
            return sync_start
        return first
    raise ConfigError(
        f"no checkpoint yet for account {settings.account_id}: set LSPOS_SYNC_START to where the first sync starts "
        "(e.g. LSPOS_SYNC_START=2026-03-01), or run "
        f"`lspos-sync checkpoint reset --to WHEN --yes --account {settings.account_id}`")


def _execute(command: str, settings: Settings, output: "Output", store: StateStore,
             window: Callable[[datetime], Window] | None, *, progress: Callable[[datetime], None] | None = None,
             limit: int | None = None, retry: list[int] | None = None, bulk: bool | None = False,
             as_backfill: bool = False, foreseen: Foreseen | None = None) -> Report:
    """Runs the engine over `window(Lightspeed's now)`, or over the parked sales `retry`. `bulk` (backfill):
    through Bulk API 2.0 ingest jobs; None: when the window holds more sales than LSPOS_BULK_THRESHOLD.
    `as_backfill` (dry-run --from): previews the window as a backfill writes it. `foreseen` (dry-run): the account
    writes previewed so far, the previous accounts' and now this one's."""
    dry_run = command == "dry-run"
    foreseen = (foreseen or Foreseen(settings.phone_region)) if dry_run else None
    names = fieldmap.for_settings(settings)
    run_id = None if dry_run else store.start_run(command, settings.account_id)
    RUN["id"] = run_id
    with ExitStack() as stack:
        http = stack.enter_context(http_client())
        auth = LightspeedAuth(http, store, settings.account_id, settings.lightspeed_token_url,
                              settings.client_id or "", settings.client_secret or "", settings.refresh_token,
                              settings.refresh_token_variable)
        lightspeed = LightspeedClient(http, settings.lightspeed_api_url, settings.account_id, auth)
        salesforce = SalesforceClient(settings.salesforce, reserve_percent=settings.api_reserve_percent,
                                      field_map=names)
        sink = RecordingSink(salesforce, foreseen) if foreseen is not None else CompositeWriter(salesforce)
        display: _Quiet | WindowBar | Spinner = _Quiet()  # what the run shows once its window is known

        def batch_done(sales: int, summary: RunSummary) -> None:
            display.advance(sales, summary)

        engine = Engine(settings.account_id, store, lightspeed, sink, dry_run=dry_run,
                        phone_region=settings.phone_region, person_record_type=settings.person_account_record_type,
                        verify_unchanged=command == "backfill" or as_backfill, enrich_profiles=settings.enrich_profiles,
                        field_map=names, roll_up=settings.rollups, on_batch=batch_done,
                        sync_customers=settings.sync_customers, foreseen=foreseen)
        try:
            if not names.identity:  # (LSPOS_ROLLUPS alone costs no describe: `mapping check` covers its fields)
                fieldmap.check_org(settings, names, salesforce.describe)
            if window is None:
                display = stack.enter_context(_display(output, command, settings.account_id, None, salesforce))
                summary = engine.retry(retry or [])
            else:
                # The window ends at Lightspeed's now, never the host's (contract §4, "Whose clock").
                bounds = window(lightspeed.now())
                if run_id is not None:
                    store.set_run_window(run_id, bounds.since, bounds.until)
                display = stack.enter_context(_display(output, command, settings.account_id, bounds, salesforce))
                progress = display.tracking(progress)  # on a terminal, the bar moves with it
                if bulk is None:  # one request: `count=1` (contract §2, LSPOS_BULK_THRESHOLD)
                    bulk = lightspeed.count_sales(bounds.since, bounds.until) > settings.bulk_threshold
                if bulk:
                    from lspos_sync.bulk import BulkBackfill

                    log.info("writing through Salesforce Bulk API 2.0 ingest jobs", extra={"phase": "bulk"})
                    summary = BulkBackfill(
                        settings.account_id, store, lightspeed, salesforce, phone_region=settings.phone_region,
                        person_record_type=settings.person_account_record_type,
                        enrich_profiles=settings.enrich_profiles, field_map=names, roll_up=settings.rollups,
                        sync_customers=settings.sync_customers, on_batch=batch_done).run(command, bounds,
                                                                                         progress=progress)
                else:
                    summary = engine.run(command, bounds, progress=progress, limit=limit)
        except Exception as error:
            if run_id is not None:
                code = error.exit_code if isinstance(error, SyncError) else 1
                store.finish_run(run_id, "failed", code, {
                    "error": output.mask(str(error)), "salesforce_api_calls": salesforce.api_calls,
                    "lightspeed_requests": lightspeed.requests, **_clock(lightspeed)})
            raise
    data = summary_dict(summary, include_plans=dry_run)
    if not names.identity:
        data["mapping"] = {"source": str(names.source), "changes": names.changes()}
    if command == "backfill":
        data["bulk"] = bool(bulk)
    data.update({"outcome": "rejected" if summary.exit_code == 3 else "ok", "exit_code": summary.exit_code,
                 "salesforce_api_calls": salesforce.api_calls, "lightspeed_requests": lightspeed.requests,
                 "lightspeed_throttled": lightspeed.throttled, "dry_run": dry_run, **_clock(lightspeed)})
    if run_id is not None:
        store.finish_run(run_id, data["outcome"], summary.exit_code, _recorded(data))
    return Report(data, _report(summary, data, output), summary.exit_code)


def _recorded(data: dict[str, Any]) -> dict[str, Any]:
    """The run's result as the run history keeps it: each list (sales parked, ambiguous or incomplete, accounts
    enriched, customers, roll-ups) as its length. Every run lists every parked sale again, and the history keeps 90
    days of runs; the lists are in the run's output, and the parked ones in `rejects list`."""
    return {key: len(value) if isinstance(value, list) else _recorded(value) if isinstance(value, dict) else value
            for key, value in data.items()}


def _clock(lightspeed: LightspeedClient) -> dict[str, int]:
    """How far the host's clock ran ahead of Lightspeed's (negative: behind), for `status` to measure lag on
    Lightspeed's clock; nothing when no response said."""
    ahead = lightspeed.host_ahead
    return {"host_clock_ahead_seconds": round(ahead.total_seconds())} if ahead is not None else {}


def _report(summary: RunSummary, data: dict, output: "Output") -> list[str]:
    """The plain report: for dry-run one line per sale, then one summary line; rejects, ambiguous sales and
    sales with data Lightspeed did not send listed, each sale once, so the operator sees exactly which need
    attention."""
    preview = summary.command == "dry-run"
    lines, customer_notes, fills, customer_counts = customer_feed.report_lines(summary.customers, preview)
    if preview:
        for change in (data.get("mapping") or {}).get("changes", []):
            output.note(f"mapping: {change}")
        if output.fancy and not output.as_json:
            _table(summary)
        else:
            for plan in summary.plans:
                account = f" -> {plan.account_id}" if plan.account_id else ""
                added = ", ".join(f"{name}={value!r}" for name, value in (plan.added or {}).items())
                lines.append(f"sale {plan.sale_id} ({plan.sale_key}) {plan.action}: {plan.status} total {plan.total:.2f}, "
                             f"{plan.lines} line(s), customer {plan.match}{account}"
                             + (f" ({plan.reason})" if plan.reason else "") + (f"; adds {added}" if added else ""))
    for reject in data["rejected"]:
        output.note(f"rejected {reject['sale_key']}: {reject['reason']}")
    for sale in summary.ambiguous.values():
        kept = sale.get("linked_by_hand")
        output.note(f"ambiguous {sale['sale_key']}: {sale['reason']} (candidates {', '.join(sale['candidates'])}); "
                    + (f"the account linked by hand, {kept}, is kept" if kept else "written without an account"))
    for sale in summary.gaps.values():
        missing = "; ".join((f"line {gap['line']}: " if gap["line"] else "") + f"{gap['record']} not sent by "
                            f"Lightspeed ({', '.join(gap['left_empty'])} left empty)" for gap in sale["missing"])
        output.note(f"incomplete {sale['sale_key']}: {missing}; {'would be ' if preview else ''}written with what "
                    "is known")
    for note in customer_notes:
        output.note(note)
    fills += [f"{'would fill' if preview else 'filled'} empty fields of account {account['account_id']} "
              f"({account['customer_key']}): {', '.join(account['fields'])}" for account in summary.enriched]
    for fill in fills:
        # A fill is no fault: the preview lists it, a run logs it at INFO (-v, JSON logs), so cron's stderr stays
        # quiet on success (contract §1).
        if preview:
            output.note(fill)
        else:
            log.info("%s", fill)
    rolled = summary.rollups
    for change in (rolled or {}).get("changes", []):
        moves = ", ".join(f"{name} {move['from']} -> {move['to']}" for name, move in change["fields"].items())
        output.note(f"roll-ups of account {change['account_id'] or 'to create for ' + change['customer_key']} "
                    f"would change: {moves}")
    for refused in (rolled or {}).get("rejected", []):
        output.note(f"roll-ups of account {refused['account_id']} rejected: {refused['reason']} (retried next run)")
    verb = "would write" if summary.command == "dry-run" else "written"
    window = f"{iso(summary.window.since)} .. {iso(summary.window.until)}" if summary.window else ""
    lines.append(
        f"{summary.command} account {summary.account_id} [{window}]: {summary.sales_read} sale(s) read, "
        f"{summary.written} {verb}, {summary.unchanged} unchanged, {len(data['rejected'])} rejected, "
        f"{len(summary.ambiguous)} ambiguous"
        + (f", {len(summary.gaps)} incomplete" if summary.gaps else "") + customer_counts
        + f"; {data['salesforce_api_calls']} Salesforce call(s), "
        f"{data['lightspeed_requests']} Lightspeed request(s)"
        + (f"; roll-ups {'would change on' if preview else 'updated on'} "
           f"{len(rolled['changes']) if preview else rolled['updated']} of {rolled['accounts']} account(s)"
           if rolled else "")
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


def _display(output: "Output", command: str, account_id: str, window: Window | None,
             salesforce: SalesforceClient) -> "_Quiet | WindowBar | Spinner":
    """What the run shows on stderr as it goes (contract §1): on a terminal, a bar over the window for `sync` and
    `backfill`, a spinner for the other commands and under --json (whose stdout is one JSON object either way);
    nothing at all under cron."""
    if not output.fancy:
        return _Quiet()
    from lspos_sync.progress import Spinner, WindowBar  # rich: only ever imported on a terminal

    if command in ("sync", "backfill") and window is not None and not output.as_json:
        return WindowBar(command, account_id, window, salesforce)
    return Spinner(command)


class _Quiet:
    """Under cron: nothing while the run goes; the summary line says how it went."""

    def __enter__(self) -> "_Quiet":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def advance(self, sales: int, summary: RunSummary) -> None:
        pass

    def tracking(self, progress: Callable[[datetime], None] | None) -> Callable[[datetime], None] | None:
        return progress
