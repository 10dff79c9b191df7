"""The command line (contract §1): parses options, builds the collaborators, calls the engine once,
and maps our exceptions to exit codes in one place. No HTTP and no SOQL here."""

from __future__ import annotations

import gc
import json
import logging
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import click

from lspos_sync import certificates
from lspos_sync.config import Settings, load_settings, parse_when, read_environment
from lspos_sync.errors import ConfigError, SyncError
from lspos_sync.output import Output, mask_contact
from lspos_sync.state import StateStore, iso, utcnow

log = logging.getLogger("lspos_sync")

# httpx imports its own command-line client (with rich's console and pygments) whenever rich and click are
# installed, as they are for ours. Marked absent, it is skipped, as httpx does when they are not (its `httpx`
# command then prints how to install it); nothing of ours uses it. Measured for issue #12 (docs/performance.md):
# without this line every run spends 0.06 to 0.08 CPU s and 4 to 5 MB more on imports, a sixth of a no-op run's
# CPU, which pays for pydantic's import too (the no-op's target is 0.5 s wall).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]


def common_options(command: Callable) -> Callable:
    """--json, --env-file, --state, -v and --log-format, accepted by every command."""
    command = click.option("--json", "as_json", is_flag=True, default=None,
                           help="Print exactly one JSON object on stdout; logs go to stderr.")(command)
    command = click.option("--env-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                           help="Read variables from this file (default: .env in the working directory).")(command)
    command = click.option("--state", "state_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
                           help="The SQLite state file (overrides LSPOS_STATE_PATH).")(command)
    command = click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")(command)
    command = click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
                           help="Logs as plain lines (default) or JSON lines for log shippers.")(command)
    command = click.option("--mapping", "mapping_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
                           help="A TOML mapping file renaming, switching off or adding Salesforce fields "
                                "(overrides LSPOS_MAPPING).")(command)
    return command


class Context:
    """Options given to the group and to the command; the command's win."""

    def __init__(self, as_json: bool | None, env_file: Path | None, state_path: Path | None, verbose: int,
                 log_format: str | None = None, mapping_path: Path | None = None) -> None:
        self.as_json, self.env_file, self.state_path, self.verbose = as_json, env_file, state_path, verbose
        self.log_format, self.mapping_path = log_format, mapping_path

    def merged(self, as_json: bool | None, env_file: Path | None, state_path: Path | None, verbose: int,
               log_format: str | None = None, mapping_path: Path | None = None) -> "Context":
        return Context(as_json if as_json is not None else self.as_json, env_file or self.env_file,
                       state_path or self.state_path, verbose or self.verbose, log_format or self.log_format,
                       mapping_path or self.mapping_path)


def run_command(name: str, options: Context, body: Callable[[Settings, Output], int]) -> None:
    """Loads the settings, runs the body, and turns every expected failure into one line and an exit code."""
    output = Output(bool(options.as_json), options.verbose, options.log_format or "text")
    output.setup_logging()
    try:
        environment = read_environment(options.env_file)
        certificates.adopt(environment)
        settings = load_settings(environment, options.state_path, options.mapping_path)
        output.secrets = settings.secrets
        code = body(settings, output)
    except SyncError as error:
        _fail(name, output, output.mask(str(error)), error.exit_code)
    except Exception as error:  # a bug or a surprise: still one line, one JSON object, exit 1
        log.debug("unexpected error", exc_info=True)
        _fail(name, output, output.mask(f"unexpected {type(error).__name__}: {error}"[:500]), 1)
    sys.exit(code)


def _fail(name: str, output: Output, message: str, exit_code: int) -> None:
    output.note(f"Error: {message}")
    if output.as_json or output.log_format == "json":
        click.echo(json.dumps({"command": name, "outcome": "failed", "exit_code": exit_code,
                               "error": mask_contact(message)}))
    sys.exit(exit_code)


def run() -> None:
    """The console script and `python -m lspos_sync`: click's own errors (a bad option, Ctrl-C) still give one JSON
    object with --json."""
    # A run makes millions of short-lived objects (pages, models, records) and few cycles: the collector's
    # default (a young collection every 700 allocations) took 1.5 of a 10,000-sale sync's 7.2 CPU s. The modules
    # imported so far are frozen out of it, and it runs less often: 0.72 -> 0.52 CPU s per 1,000 sales, peak RSS
    # unchanged (docs/performance.md, "Earlier on 2026-12-03").
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        # Named `lspos-sync` however it was started: `python -m lspos_sync` is the same program (contract §1).
        main(prog_name="lspos-sync", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as error:  # no command at all: the help, as click shows it
        error.show()
        _usage_failure(str(error.format_message()), 2)
    except click.UsageError as error:  # one line, like every other expected failure (docs/failure-modes.md)
        where = f" See '{error.ctx.command_path} --help'." if error.ctx is not None else ""
        click.echo(f"Error: {error.format_message()}{where}", err=True)
        _usage_failure(str(error.format_message()), 2)
    except click.Abort:
        click.echo("Aborted.", err=True)
        _usage_failure("aborted", 1)
    sys.exit(0)


def _usage_failure(message: str, exit_code: int) -> None:
    if "--json" in sys.argv[1:]:
        click.echo(json.dumps({"command": " ".join(a for a in sys.argv[1:3] if not a.startswith("-")),
                               "outcome": "failed", "exit_code": exit_code, "error": message}))
    sys.exit(exit_code)


@click.group()
@common_options
@click.version_option(package_name="lspos-sync")
@click.pass_context
def main(ctx: click.Context, as_json: bool | None, env_file: Path | None, state_path: Path | None,
         verbose: int, log_format: str | None, mapping_path: Path | None) -> None:
    """Keep Salesforce in step with a Lightspeed Retail (R-Series) point of sale."""
    ctx.obj = Context(as_json, env_file, state_path, verbose, log_format, mapping_path)


def _options(ctx: click.Context, as_json: bool | None, env_file: Path | None, state_path: Path | None,
             verbose: int, log_format: str | None = None, mapping_path: Path | None = None) -> Context:
    root = ctx.find_object(Context) or Context(None, None, None, 0)
    return root.merged(as_json, env_file, state_path, verbose, log_format, mapping_path)


def account_option(command: Callable) -> Callable:
    return click.option("--account", "account", metavar="ID",
                        help="Only this Lightspeed account (one of LIGHTSPEED_ACCOUNTS).")(command)


def _accounts(settings: Settings, account: str | None, configured_only: bool = True) -> list[str]:
    """The accounts a command acts on: the one given, else every configured one. A command that only reads
    the state file may name an account that is no longer (or not yet) configured."""
    if account:
        return [account if not configured_only and not settings.account_ids else settings.for_account(account).account_id]
    return settings.account_ids


def _when(value: str | None, option: str) -> datetime | None:
    return parse_when(value, option) if value is not None else None


@main.command()
@account_option
@common_options
@click.pass_context
def sync(ctx: click.Context, account: str | None, **common: Any) -> None:
    """Incremental run for cron: sales changed since the checkpoint (minus the look-back), then advance it.
    With LIGHTSPEED_ACCOUNTS, each account in turn."""
    from lspos_sync.run import incremental

    run_command("sync", _options(ctx, **common), lambda settings, output: incremental(settings, output, account))


@main.command()
@click.option("--from", "from_", required=True, metavar="WHEN", help="Start of the window (ISO 8601).")
@click.option("--to", "to", metavar="WHEN", help="End of the window (ISO 8601; default: now).")
@click.option("--bulk/--no-bulk", "bulk", default=None,
              help="Write through Salesforce Bulk API 2.0 ingest jobs, or not (default: when the window holds more "
                   "sales than LSPOS_BULK_THRESHOLD).")
@account_option
@common_options
@click.pass_context
def backfill(ctx: click.Context, from_: str, to: str | None, bulk: bool | None, account: str | None,
             **common: Any) -> None:
    """Load a historical window through the same engine; never moves the live checkpoint."""
    from lspos_sync.run import bounded

    def body(settings: Settings, output: Output) -> int:
        since, until = _window(from_, to)
        return bounded(settings, output, since, until, account, bulk=bulk)

    run_command("backfill", _options(ctx, **common), body)


@main.command("dry-run")
@click.option("--from", "from_", metavar="WHEN",
              help="Start of the window, previewed as a backfill of it (default: what the next sync reads).")
@click.option("--to", "to", metavar="WHEN", help="End of the window (ISO 8601; default: now).")
@click.option("--limit", type=click.IntRange(min=1), help="Preview at most N sales.")
@account_option
@common_options
@click.pass_context
def dry_run(ctx: click.Context, from_: str | None, to: str | None, limit: int | None, account: str | None,
            **common: Any) -> None:
    """The real pipeline with every write switched off: what would happen to each sale, and why."""
    from lspos_sync.run import preview

    def body(settings: Settings, output: Output) -> int:
        since, until = _window(from_, to) if from_ else (None, _when(to, "--to"))
        return preview(settings, output, since, until, limit, account)

    run_command("dry-run", _options(ctx, **common), body)


def _window(from_: str, to: str | None) -> tuple[datetime, datetime | None]:
    """--from and --to; without --to the window ends at Lightspeed's now, known once the run reads its clock."""
    since = parse_when(from_, "--from")
    until = _when(to, "--to")
    if until is not None and since > until:
        raise ConfigError(f"--from ({iso(since)}) is after --to ({iso(until)})")
    return since, until


@main.group()
@common_options
@click.pass_context
def rejects(ctx: click.Context, **common: Any) -> None:
    """Sales (and customers, LSPOS_SYNC_CUSTOMERS) Salesforce rejected: kept in the state store and retried by every
    run until they go through."""
    ctx.obj = _options(ctx, **common)


@rejects.command("list")
@common_options
@click.pass_context
def rejects_list(ctx: click.Context, **common: Any) -> None:
    """The parked sales, then the parked customers, with Salesforce's reason and the number of attempts."""

    def body(settings: Settings, output: Output) -> int:
        def configured(account_id: str) -> bool:
            return not settings.account_ids or account_id in settings.account_ids

        parked, customers = [], []
        if settings.state_path.exists():  # nothing has run otherwise; a command that only reads creates no file
            with StateStore(settings.state_path) as store:
                parked = [r for r in store.rejects() if configured(r.account_id)]
                customers = [c for c in store.customer_rejects() if configured(c.account_id)]
        output.result({"rejects": [reject.__dict__ for reject in parked],
                       "rejected_customers": [customer.__dict__ for customer in customers]},
                      ([f"{r.sale_key} (sale {r.sale_id}): {r.attempts} attempt(s), since {r.first_seen}: {r.reason}"
                        for r in parked] or ["no rejected sales"])
                      + [f"{c.customer_key} (customer {c.customer_id}): {c.attempts} attempt(s), since {c.first_seen}: "
                         f"{c.reason}" for c in customers])
        return 0

    run_command("rejects list", _options(ctx, **common), body)


@rejects.command("retry")
@click.argument("keys", nargs=-1, metavar="[KEY]...")
@common_options
@click.pass_context
def rejects_retry(ctx: click.Context, keys: tuple[str, ...], **common: Any) -> None:
    """Write the parked sales again now (all of them, or the KEYs given, e.g. 182255-1042)."""
    from lspos_sync.run import retry_parked

    run_command("rejects retry", _options(ctx, **common), lambda settings, output: retry_parked(settings, output, keys))


@rejects.command("drop")
@click.argument("key", metavar="KEY")
@click.option("--customer", is_flag=True, help="KEY is a parked customer's (a customer and a sale may share a key).")
@common_options
@click.pass_context
def rejects_drop(ctx: click.Context, key: str, customer: bool, **common: Any) -> None:
    """Stop retrying a parked sale (or customer); a sale is written again only if Lightspeed changes it or a
    backfill covers it, a customer also when a run's look-back reads it again."""

    def body(settings: Settings, output: Output) -> int:
        with StateStore(settings.state_path) as store:
            if customer:
                if not store.drop_customer_reject(key):
                    raise ConfigError(f"no parked customer {key} (see `lspos-sync rejects list`)")
            elif not store.drop_reject(key):
                if any(c.customer_key == key for c in store.customer_rejects()):
                    raise ConfigError(f"no parked sale {key}, but a parked customer: "
                                      f"`lspos-sync rejects drop --customer {key}`")
                raise ConfigError(f"no parked sale {key} (see `lspos-sync rejects list`)")
        output.result({"dropped": key, "customer": customer}, [f"dropped {'customer ' if customer else ''}{key}"])
        return 0

    run_command("rejects drop", _options(ctx, **common), body)


@main.group()
@account_option
@common_options
@click.pass_context
def checkpoint(ctx: click.Context, account: str | None, **common: Any) -> None:
    """Show or reset the sync checkpoint."""
    ctx.obj = _options(ctx, **common)
    ctx.meta["account"] = account  # `checkpoint --account ID show` as well as `checkpoint show --account ID`


@checkpoint.command("show")
@account_option
@common_options
@click.pass_context
def checkpoint_show(ctx: click.Context, account: str | None, **common: Any) -> None:
    """The cursor(s), the last run's time and outcome."""

    from lspos_sync.status import lag_minutes

    account = account or ctx.meta.get("account")

    def body(settings: Settings, output: Output) -> int:
        accounts = _accounts(settings, account, configured_only=False)
        cursors: dict[str, dict[str, Any]] = {}
        last, ahead = None, {}
        if settings.state_path.exists():  # nothing has run otherwise; a command that only reads creates no file
            with StateStore(settings.state_path) as store:
                cursors = store.checkpoints()
                # the last run of the accounts shown (of any account when none is configured or given)
                last = max((run for account_id in accounts for run in store.recent_runs(1, account_id=account_id)),
                           key=lambda run: run["id"], default=None) if accounts else store.last_run()
                ahead = {account_id: store.host_clock_ahead(account_id) for account_id in cursors}
        if accounts:
            cursors = {i: cursors.get(i) or {"cursor": None, "updated_at": None} for i in accounts}
        now = datetime.now(timezone.utc)
        data: dict[str, Any] = {"checkpoints": {}, "last_run": None}
        lines = []
        for account_id, cursor in cursors.items():
            # on Lightspeed's clock, as the checkpoint: the host's now less how far it ran ahead at the last run
            lag = lag_minutes(now, ahead.get(account_id, timedelta(0)),
                              datetime.fromisoformat(cursor["cursor"]) if cursor["cursor"] else None)
            data["checkpoints"][account_id] = {**cursor, "lag_minutes": lag}
            lines.append(f"account {account_id}: checkpoint {cursor['cursor'] or 'not set'}"
                         + (f" ({lag} min ago)" if lag is not None and lag >= 0 else
                            " (later than Lightspeed's clock)" if lag is not None else ""))
        if last:
            data["last_run"] = {k: last[k] for k in ("command", "account_id", "started_at", "ended_at", "outcome",
                                                     "exit_code")}
            lines.append(f"last run: {last['command']}"
                         + (f" account {last['account_id']}" if settings.several_accounts and last["account_id"] else "")
                         + f" started {last['started_at']}, {last['outcome']}"
                         + (f" (exit {last['exit_code']})" if last["exit_code"] is not None else ""))
        else:
            lines.append("last run: none")
        output.result(data, lines)
        return 0

    run_command("checkpoint show", _options(ctx, **common), body)


@checkpoint.command("reset")
@click.option("--to", "to", metavar="WHEN", help="Set the checkpoint to WHEN instead of clearing it.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@account_option
@common_options
@click.pass_context
def checkpoint_reset(ctx: click.Context, to: str | None, yes: bool, account: str | None, **common: Any) -> None:
    """Clear the checkpoint, or set it to WHEN (of every configured account, or of --account)."""

    account = account or ctx.meta.get("account")

    def body(settings: Settings, output: Output) -> int:
        accounts = _accounts(settings, account)
        if not accounts:
            raise ConfigError("missing configuration: LIGHTSPEED_ACCOUNT_ID (whose checkpoint to reset)")
        target = _when(to, "--to")
        if target is not None and target > utcnow():  # the host's clock: only a hint of Lightspeed's, hence no refusal
            log.warning("--to %s is later than this host's clock: until Lightspeed's clock passes it, each sync reads "
                        "from Lightspeed's now minus the look-back and sets the checkpoint back to where it read up to",
                        iso(target))
        whose = f"account{'s' if len(accounts) > 1 else ''} {', '.join(accounts)}"
        what = f"set the checkpoint of {whose} to {iso(target)}" if target else f"clear the checkpoint of {whose}"
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError(f"refusing to {what} without a terminal to confirm: add --yes")
            if not click.confirm(f"{what[0].upper()}{what[1:]}?", err=True):
                raise ConfigError("checkpoint reset cancelled")
        results, lines = [], []
        with StateStore(settings.state_path) as store:  # (closing it releases the locks)
            for account_id in accounts:  # every lock first: a run holding one is exit 4 with nothing reset
                store.acquire_lock(account_id)
            for account_id in accounts:
                previous = store.checkpoint(account_id)
                if target:
                    store.set_checkpoint(account_id, target)
                else:
                    store.clear_checkpoint(account_id)
                results.append({"account_id": account_id, "previous": iso(previous) if previous else None,
                                "checkpoint": iso(target) if target else None})
                lines.append(f"account {account_id}: checkpoint {iso(target) if target else 'cleared'} "
                             f"(was {iso(previous) if previous else 'not set'})")
        output.result(results[0] if not settings.several_accounts else {"accounts": results}, lines)
        return 0

    run_command("checkpoint reset", _options(ctx, **common), body)


@main.group()
@common_options
@click.pass_context
def mapping(ctx: click.Context, **common: Any) -> None:
    """The Salesforce names lspos-sync writes to: the contract's defaults as changed by the mapping file."""
    ctx.obj = _options(ctx, **common)


@mapping.command("show")
@common_options
@click.pass_context
def mapping_show(ctx: click.Context, **common: Any) -> None:
    """The effective mapping: every object and field written, renamed, switched off or added. Offline."""
    from lspos_sync import fieldmap

    def body(settings: Settings, output: Output) -> int:
        names = fieldmap.for_settings(settings)
        data = names.describe()
        lines = [f"mapping: {data['source'] or 'none (the contract defaults)'}"]
        for obj, described in data["objects"].items():
            lines.append(f"{obj} -> {described['object']}")
            lines += [f"  {name}: {'(switched off)' if target is None else target}"
                      for name, target in described["fields"].items()]
            lines += [f"  + {name}: from {added['from']} ({added['type']})" for name, added in described["added"].items()]
        output.result(data, lines)
        return 0

    run_command("mapping show", _options(ctx, **common), body)


@mapping.command("check")
@common_options
@click.pass_context
def mapping_check(ctx: click.Context, **common: Any) -> None:
    """Check the mapping against the org's describe (one API call): exit 0 when it fits, 2 with one line per
    problem when it does not."""
    from lspos_sync.run import check_org_mapping

    run_command("mapping check", _options(ctx, **common), check_org_mapping)


@main.command()
@click.option("--max-lag-minutes", type=click.IntRange(min=0), metavar="N",
              help="Also exit 1 when the checkpoint is more than N minutes old (for a monitoring check).")
@common_options
@click.pass_context
def status(ctx: click.Context, max_lag_minutes: int | None, **common: Any) -> None:
    """The last runs, the checkpoint lag and the parked rejected sales; exit 1 when the last sync or backfill failed
    or was killed, or the checkpoint is later than Lightspeed's clock."""
    from lspos_sync.status import report

    run_command("status", _options(ctx, **common),
                lambda settings, output: report(settings, output, max_lag_minutes))


@main.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (state file, env file) and print its path.")
@common_options
@click.pass_context
def demo(ctx: click.Context, keep: bool, **common: Any) -> None:
    """Sync a seeded boutique on the built-in emulators with the real commands; needs no credentials.

    Everything happens in a temporary directory: your .env and state file are never read (--env-file and
    --state are ignored here)."""
    from lspos_sync.demo import run_demo

    options = _options(ctx, **common)
    output = Output(bool(options.as_json), options.verbose, options.log_format or "text")
    output.setup_logging()
    try:
        code = run_demo(output, keep)
    except Exception as error:  # still one line, and one JSON object with --json
        log.debug("demo failed", exc_info=True)
        _fail("demo", output, f"the demo failed: {type(error).__name__}: {error}"[:500], 1)
    sys.exit(code)


@main.command()
@click.option("--from", "from_", required=True, metavar="WHEN",
              help="Start of the window of completion times (ISO 8601, included).")
@click.option("--to", "to", required=True, metavar="WHEN",
              help="End of the window (ISO 8601, excluded: --from 2026-03-01 --to 2026-04-01 is March).")
@account_option
@common_options
@click.pass_context
def reconcile(ctx: click.Context, from_: str, to: str, account: str | None, **common: Any) -> None:
    """Compare Lightspeed and Salesforce over a window of completion times: counts and totals per shop and
    UTC day, and the sales missing, extra or different in Salesforce. Exit 0 when they agree, 3 when not."""
    from lspos_sync.reconcile import reconcile as compare_systems

    def body(settings: Settings, output: Output) -> int:
        since, until = _window(from_, to)
        return compare_systems(settings, output, since, until, account)

    run_command("reconcile", _options(ctx, **common), body)
