"""Issue #4 benchmark: the reference workload through the real CLI, against the emulators, with latency.

    python bench/benchmark.py                  # 10,000 sales; a 200-sale naive baseline beside it
    python bench/benchmark.py --case salesforce-slower --naive-sales 0   # the same sync, Salesforce the slower side
    python bench/benchmark.py --sales 100000 --command backfill --ls-latency 0 --sf-latency 0 --naive-sales 0
    python bench/benchmark.py --naive-sales 0 --features rollups,customers,enrich   # contract §5's options on

Seeds the workload of `workload.py`, runs `python -m lspos_sync sync` as a child process (as cron would),
then the same command again (the no-op run), then `naive_sync.py` on a workload of its own. Each child's CPU
time and peak RSS come from its own rusage (`os.wait4` in a small launcher process, the figures RUSAGE_CHILDREN
accumulates); requests are counted by the emulators. Prints one Markdown table.

The API-bound floor of a run is max(Lightspeed, Salesforce):
  Lightspeed: its requests one after another, each taking the latency, and an ideal client's waits for the
  leaky bucket (size 90, the drip rate given) given the cost the emulator charged for each request;
  Salesforce: its API calls times the latency, plus the org's work on the records written (`--sf-record-ms`).

Two cases (`--case`): `lightspeed-slower` (the default: 80 ms a Lightspeed request and its bucket draining 10
drips/s against 150 ms a Salesforce call), and `salesforce-slower`: the same, plus 0.5 ms of the org's own work
a record written (100 ms a 200-record collection, about 0.5 s a full `/composite`), which makes Salesforce's
floor about 1.35 times Lightspeed's: close enough that how far the two overlap decides the wall time.

With `--features` (the names of soak.py's), the optional features of contract §5 are on for the measured run and
the no-op after it, and the workload gives them something to do (workload.py: clients who never bought, profile
fields the till knows and the CRM lacks); without it the run and its workload are the default ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit

import emulators
import workload
from emulators import BenchLightspeed, BenchSalesforce
from soak import FEATURES

BUCKET_SIZE = 90.0  # the real bucket (fact sheet §6), never scaled
SPY_RATE = 500  # py-spy samples a second
REAL_DRIP_RATE = 1.0  # drips a second, scaled by --drip-scale so the run stays short
_CREDENTIALS = {"account_id": "182255", "client_id": "bench-client-id", "client_secret": "bench-client-secret",
                "refresh_token": "bench-refresh-token"}
_SF_TOKEN = "bench-salesforce-token"
# Which API is the slower side: the latencies, the org's work per record written, the bucket's speed-up.
CASES = {
    "lightspeed-slower": {"ls_latency": 0.080, "sf_latency": 0.150, "sf_record_ms": 0.0, "drip_scale": 10.0},
    "salesforce-slower": {"ls_latency": 0.080, "sf_latency": 0.150, "sf_record_ms": 0.5, "drip_scale": 10.0},
}


@dataclass
class Measured:
    name: str
    sales: int
    exit_code: int
    wall: float
    cpu: float
    max_rss_mb: float
    sf_calls: int
    ls_requests: int
    throttled: int
    ls_floor: float
    sf_floor: float
    emulator_busy: float
    ls_busy: float
    sf_busy: float
    report: dict = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    @property
    def floor(self) -> float:
        return max(self.ls_floor, self.sf_floor)

    @property
    def busy_floor(self) -> float:
        """The floor with each emulator's own handler time added to its side: what the emulated APIs needed on
        this machine, which on a loaded one is much more than their latencies. Both emulators run in this one
        process, so their handlers never run at the same time: together they take at least the sum."""
        return max(self.ls_floor + self.ls_busy, self.sf_floor + self.sf_busy, self.ls_busy + self.sf_busy)

    def per_thousand(self, value: float) -> float:
        return value * 1000 / self.sales if self.sales else float("nan")

    def shortfalls(self) -> list[str]:
        """The issue's targets this run misses (per 1,000 sales; a run without sales is the no-op)."""
        if not self.sales:
            return [f"no-op wall {self.wall:.2f} s (target < 0.5 s)"] if self.wall >= 0.5 else []
        ratio = self.wall / self.floor if self.floor else 1.0  # no latency, no floor: nothing to compare
        checks = ((self.per_thousand(self.sf_calls) <= 5.0,
                   f"Salesforce {self.per_thousand(self.sf_calls):.1f} calls /1k (≤ 5.0)"),
                  (self.per_thousand(self.ls_requests) <= 10.5,
                   f"Lightspeed {self.per_thousand(self.ls_requests):.1f} requests /1k (≤ 10.5)"),
                  (self.throttled == 0, f"{self.throttled} 429s (0)"),
                  (self.per_thousand(self.cpu) <= 0.30, f"CPU {self.per_thousand(self.cpu):.3f} s /1k (≤ 0.30)"),
                  (self.max_rss_mb < 100, f"peak RSS {self.max_rss_mb:.0f} MB (< 100)"),
                  (ratio <= 1.25, f"wall {ratio:.2f}x the floor (≤ 1.25)"))
        return [text for ok, text in checks if not ok]


class Stage:
    """Two emulators seeded with a workload, and a way to run a child process against them."""

    def __init__(self, workdir: Path, sales: int, args: argparse.Namespace, launcher: Launcher,
                 features: frozenset[str] = frozenset()) -> None:
        self.workdir = workdir
        self.args = args
        self.launcher = launcher
        self.lightspeed = BenchLightspeed(**_CREDENTIALS, bucket_size=BUCKET_SIZE,
                                          drip_rate=REAL_DRIP_RATE * args.drip_scale, latency=args.ls_latency)
        self.salesforce = BenchSalesforce(workdir / "tls", access_token=_SF_TOKEN, latency=args.sf_latency,
                                          daily_api_limit=10_000_000, record_work=args.sf_record_ms / 1000)
        self.lightspeed.start()
        self.salesforce.start()
        began = time.monotonic()
        now = datetime.now(UTC)
        self.seeded = workload.seed(self.lightspeed, self.salesforce, sales, now, features=bool(features))
        self.seed_seconds = time.monotonic() - began
        settings = {**self.lightspeed.env(), "SALESFORCE_INSTANCE_URL": self.salesforce.instance_url,
                    "SALESFORCE_ACCESS_TOKEN": self.salesforce.access_token,
                    "LSPOS_STATE_PATH": str(workdir / "state.db"),
                    "LSPOS_SYNC_START": (now - timedelta(days=31)).isoformat(timespec="seconds"),
                    **{FEATURES[name]: "true" for name in sorted(features)}}
        self.env_file = workdir / "bench.env"
        self.env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSPEED_", "SALESFORCE_", "LSPOS_"))}
        self.env = {**inherited, "SSL_CERT_FILE": str(self.salesforce.ca_bundle),
                    "REQUESTS_CA_BUNDLE": str(self.salesforce.ca_bundle),
                    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def stop(self) -> None:
        self.lightspeed.stop()
        self.salesforce.stop()

    def run(self, name: str, command: list[str], sales: int) -> Measured:
        ls, sf = self.lightspeed, self.salesforce
        charges_before, requests_before = len(ls.charges), len(ls.requests)
        calls_before, sf_before, work_before = sf.api_calls, len(sf.requests), sf.work
        ls_busy, sf_busy, absorbed_before = ls.busy, sf.busy, sf.absorbed
        stdout, stderr = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        spawned = self.launcher.run(command, self.workdir, self.env, stdout, stderr)
        wall, returncode = spawned["wall"], spawned["returncode"]
        text = stdout.read_text().strip()
        try:
            report = json.loads(text.splitlines()[-1]) if text else {}
        except ValueError:
            report = {}
        if returncode not in (0, 3):
            sys.stderr.write(f"{name}: exit {returncode}\n{stderr.read_text()[-2000:]}\n")
        gc_line = [line for line in stderr.read_text().splitlines() if line.startswith("gc: ")]
        new_requests = ls.requests[requests_before:]
        charged = [cost for cost, through in ls.charges[charges_before:] if through]
        calls = sf.api_calls - calls_before
        # Salesforce's handler time beyond the org's modelled record work, which it was part of (bench/emulators.py)
        sf_handlers, absorbed = sf.busy - sf_busy, sf.absorbed - absorbed_before
        return Measured(
            name=name, sales=sales, exit_code=returncode, wall=wall, cpu=spawned["cpu"],
            max_rss_mb=spawned["maxrss_kb"] / 1024, sf_calls=calls,
            ls_requests=sum(1 for r in new_requests if r.path.startswith("/API/")),
            throttled=sum(1 for r in new_requests if r.status == 429),
            ls_floor=lightspeed_floor(charged, self.args.ls_latency, BUCKET_SIZE, REAL_DRIP_RATE * self.args.drip_scale),
            sf_floor=calls * self.args.sf_latency + sf.work - work_before, emulator_busy=ls.busy - ls_busy + sf_handlers - absorbed, ls_busy=ls.busy - ls_busy,
            sf_busy=sf_handlers - absorbed, report=report,
            details=breakdown(new_requests, sf.requests[sf_before:]) + [
                f"emulator handlers: Lightspeed {ls.busy - ls_busy:.1f} s, Salesforce {sf_handlers:.1f} s"
                + (f" ({absorbed:.1f} s of it inside the org's modelled record work)" if absorbed else "")]
            + gc_line)


_QUERY_KINDS = (("GROUP BY Account__c", "roll-up aggregates"), ("Lifetime_Spend__c", "roll-up current values"),
                ("FROM Sales_Line_Item__c", "lines"), ("FROM Sales_Transaction__c", "transactions"),
                ("OR (IsPersonAccount = true", "account by key, email or phone"), ("LIKE", "phone LIKE"), ("PersonMobilePhone IN", "phone spellings"), ("PersonEmail IN", "email"),
                ("LS_Customer_ID__c IN", "account key"), ("FROM RecordType", "record type"))


def breakdown(ls_requests: list, sf_requests: list) -> list[str]:
    """What the requests of one run were: Lightspeed by resource, Salesforce by kind of call and subrequest."""
    resources = Counter(r.path.rsplit("/", 1)[-1] for r in ls_requests if r.path.startswith("/API/"))
    calls: Counter = Counter()
    queries: Counter = Counter()
    collections = records = 0
    written: Counter = Counter()  # records by collection kind: upserts by object, updates, deletes
    for record in sf_requests:
        target = urlsplit(record.path)
        if not target.path.startswith("/services/data/"):
            continue
        if target.path.endswith("/composite"):
            subrequests = (record.body or {}).get("compositeRequest", [])
            kinds = set()
            for sub in subrequests:
                if "/query" in sub["url"]:
                    soql = unquote_plus(sub["url"].split("q=", 1)[-1])
                    queries[next((k for marker, k in _QUERY_KINDS if marker in soql), "other")] += 1
                    kinds.add("lookup")
                else:
                    body = sub.get("body") or {}
                    collections += 1
                    sent = len(body.get("records", [])) if isinstance(body, dict) else 0
                    if sub["method"] == "DELETE":
                        sent += sub["url"].split("ids=", 1)[-1].split("&")[0].count(",") + 1
                        written["delete"] += sent
                    else:
                        tail = sub["url"].split("/composite/sobjects", 1)[-1].strip("/")
                        written[f"upsert {tail.split('/')[0]}" if tail else "update Account"] += sent
                    records += sent
                    kinds.add("write")
            calls["/composite " + " + ".join(sorted(kinds))] += 1
        else:
            parts = target.path.split("/")[4:]  # after /services/data/vXX.X/
            name = "/".join(parts[:2]) if parts and parts[0] == "sobjects" else (parts[0] if parts else "")
            calls[f"{record.method} {name}"] += 1
    lines = ["Lightspeed requests: " + ", ".join(f"{name} {count}" for name, count in resources.most_common())]
    if calls:
        lines.append("Salesforce calls: " + ", ".join(f"{name} {count}" for name, count in calls.most_common()))
        if queries:
            lines.append("  query subrequests: " + ", ".join(f"{k} {n}" for k, n in queries.most_common())
                         + f" ({sum(queries.values())} in all)")
        if collections:
            lines.append(f"  collection subrequests: {collections}, {records} records "
                         f"({records / collections:.0f} a collection of at most 200): "
                         + ", ".join(f"{kind} {n}" for kind, n in written.most_common()))
    return lines


class Launcher:
    """Starts the measured children from a small process of its own.

    A child's ru_maxrss counts the memory of the process it was forked from (Linux carries the pre-exec peak
    over), and this process holds two seeded emulators: forked from here, every child would look as big as
    they are. The launcher is started before anything is seeded, so it stays at a few MB.
    """

    _CODE = """
import json, os, subprocess, sys, time
for line in sys.stdin:
    job = json.loads(line)
    began = time.perf_counter()
    with open(job["stdout"], "wb") as out, open(job["stderr"], "wb") as err:
        child = subprocess.Popen(job["command"], cwd=job["cwd"], env=job["env"], stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - began
    print(json.dumps({"wall": wall, "returncode": os.waitstatus_to_exitcode(status),
                      "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}), flush=True)
"""

    def __init__(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-c", self._CODE], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)

    def run(self, command: list[str], cwd: Path, env: dict[str, str], stdout: Path, stderr: Path) -> dict:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps({"command": command, "cwd": str(cwd), "env": env,
                                              "stdout": str(stdout), "stderr": str(stderr)}) + "\n")
        self._process.stdin.flush()
        return json.loads(self._process.stdout.readline())

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait()


def lightspeed_floor(costs: list[float], latency: float, size: float, drip: float) -> float:
    """Seconds an ideal client needs for these requests: one after another, each `latency` long, each sent as
    soon as the bucket (empty at the start) lets it through without a 429 (level at most `size` on arrival)."""
    clock = level = 0.0
    for cost in costs:
        arrival = clock + latency
        level = max(0.0, level - latency * drip)
        if level > size:  # wait until it has drained to the brim
            wait = (level - size) / drip
            arrival += wait
            level = size
        level += cost
        clock = arrival
    return clock


def sync_command(args: argparse.Namespace, env_file: Path, command: str, since: str | None,
                 profile: Path | None = None) -> list[str]:
    tail = [command] + (["--from", since] if command == "backfill" else []) + ["--json", "--env-file", env_file.name]
    if profile is None:
        if args.gc:
            return [sys.executable, str(Path(__file__).with_name("gc_stats.py")), *tail]
        return [sys.executable, "-m", "lspos_sync", *tail]
    if args.profile == "pyinstrument":
        return [sys.executable, "-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(profile),
                "-m", "lspos_sync", *tail]
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [spy, "record", "--gil", "--rate", str(SPY_RATE), "--format", "raw", "--output", str(profile), "--",
            sys.executable, "-m", "lspos_sync", *tail]


def main() -> int:
    parser = argparse.ArgumentParser(description="Issue #4 benchmark (see the module docstring).")
    parser.add_argument("--sales", type=int, default=10_000, help="completed sales in the workload (default 10000)")
    parser.add_argument("--naive-sales", type=int, default=200,
                        help="sales for the one-request-per-record baseline (0 to skip; default 200)")
    parser.add_argument("--case", choices=tuple(CASES), default="lightspeed-slower",
                        help="which API is the slower side (sets the four figures below unless given)")
    parser.add_argument("--ls-latency", type=float, help="seconds per Lightspeed request (default 0.080)")
    parser.add_argument("--sf-latency", type=float, help="seconds per Salesforce request (default 0.150)")
    parser.add_argument("--sf-record-ms", type=float,
                        help="milliseconds of the org's work per record written (default 0, salesforce-slower 0.5)")
    parser.add_argument("--drip-scale", type=float,
                        help="the bucket drains this many times faster than the real 1 drip/s (default 10)")
    parser.add_argument("--command", choices=("sync", "backfill"), default="sync",
                        help="the measured run: a first sync from LSPOS_SYNC_START, or a backfill of the window")
    parser.add_argument("--profile", choices=("pyinstrument", "py-spy"),
                        help="profile the measured run: wall clock (pyinstrument, text) or CPU only (py-spy, raw "
                             "stacks for spy_summary.py); written to the current directory. Its figures then "
                             "include the profiler")
    parser.add_argument("--gc", action="store_true",
                        help="run the measured sync through gc_stats.py and report the garbage collector's CPU time")
    parser.add_argument("--features", default="",
                        help="optional features switched on for the measured runs, comma-separated: "
                             + ", ".join(f"{name} ({variable})" for name, variable in FEATURES.items())
                             + "; the workload then gives them something to do")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.features = frozenset(name.strip() for name in args.features.split(",") if name.strip())
    if unknown := args.features - set(FEATURES):
        parser.error(f"unknown feature(s) {', '.join(sorted(unknown))}; known: {', '.join(FEATURES)}")
    for name, value in CASES[args.case].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    compile_measured()
    launcher = Launcher()
    emulators.install()
    workdir = Path(tempfile.mkdtemp(prefix="lspos-bench-"))
    results: list[Measured] = []
    notes: list[str] = []
    try:
        stage = Stage(workdir / "product", args.sales, args, launcher, args.features)
        seeded = stage.seeded
        notes.append(f"workload: {seeded.sales} sales, {seeded.lines} lines "
                     f"({seeded.lines / max(1, seeded.sales):.2f} a sale), customers {seeded.customers}, "
                     f"{seeded.crm_only} CRM-only Person Accounts"
                     + (f", clients without a sale {seeded.without_sale}" if seeded.without_sale else "")
                     + f"; seeded in {stage.seed_seconds:.1f} s")
        since = (seeded.first_sale - timedelta(days=1)).isoformat(timespec="seconds")
        profile = workdir / f"profile-{args.profile}.txt" if args.profile else None
        results.append(stage.run(f"lspos-sync {args.command}",
                                 sync_command(args, stage.env_file, args.command, since, profile), args.sales))
        if args.command == "sync":
            # cron comes back minutes later, to a drained bucket: wait for that rather than measure the wait
            time.sleep(BUCKET_SIZE / (REAL_DRIP_RATE * args.drip_scale))
            results.append(stage.run("no-op sync right after", sync_command(args, stage.env_file, "sync", None), 0))
        stage.stop()
        if profile is not None:
            kept = Path.cwd() / profile.name
            shutil.copy(profile, kept)
            notes.append(f"profile written to {kept}")
        if args.naive_sales:
            naive = Stage(workdir / "naive", args.naive_sales, args, launcher)
            script = Path(__file__).with_name("naive_sync.py")
            results.append(naive.run("naive, one request per record",
                                     [sys.executable, str(script), "--env-file", naive.env_file.name],
                                     args.naive_sales))
            naive.stop()
    finally:
        launcher.close()
        if args.keep:
            notes.append(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render(results, args, notes))
    return 0 if all(r.exit_code in (0, 3) for r in results) else 1


def compile_measured() -> None:
    """Writes the bytecode of the lspos_sync that is measured, as pip does when it installs a wheel: otherwise, with
    PYTHONDONTWRITEBYTECODE set (as on the machine of docs/performance.md) or a tree edited since its last run,
    every measured run would compile the modules again (0.05 to 0.1 CPU s)."""
    import compileall

    import lspos_sync

    compileall.compile_dir(str(Path(lspos_sync.__file__).resolve().parent), quiet=1)


def source() -> str:
    """Which lspos_sync was measured: its directory, and the git commit when it is a checkout."""
    import lspos_sync

    root = Path(lspos_sync.__file__).resolve().parent.parent
    described = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                               text=True, check=False)
    return f"{root}" + (f" at {described.stdout.strip()}" if described.returncode == 0 else "")


def _rate(run: Measured, value: float, shown: str, digits: int = 1) -> str:
    """`per 1,000 sales (absolute)`, or just the absolute figure for a run without sales."""
    return f"{run.per_thousand(value):.{digits}f} ({shown})" if run.sales else f"– ({shown})"


def render(results: list[Measured], args: argparse.Namespace, notes: list[str]) -> str:
    title = (f"lspos-sync benchmark of {source()}, {datetime.now().astimezone().isoformat(timespec='seconds')}, "
             f"nproc {os.cpu_count()}, Python {platform.python_version()}; case {args.case}: latency Lightspeed "
             f"{args.ls_latency * 1000:.0f} ms, Salesforce {args.sf_latency * 1000:.0f} ms"
             + (f" + {args.sf_record_ms:g} ms a record written" if args.sf_record_ms else "")
             + f"; bucket {BUCKET_SIZE:g} "
             f"draining {REAL_DRIP_RATE * args.drip_scale:g}/s ({args.drip_scale:g}x the real rate)"
             + (f"; features {','.join(sorted(args.features))}" if args.features else ""))
    lines = [title, ""]
    header = ("run", "sales", "SF calls /1k", "LS req /1k", "429s", "CPU s /1k", "peak RSS MB", "wall s",
              "floor s (LS / SF)", "wall / floor", "emulators s", "wall / floor with emulators")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in results:
        ratio = f"{r.wall / r.floor:.2f}" if r.floor else "–"
        busy_ratio = f"{r.wall / r.busy_floor:.2f}" if r.floor else "–"
        lines.append("| " + " | ".join((
            r.name, f"{r.sales:,}", _rate(r, r.sf_calls, str(r.sf_calls)), _rate(r, r.ls_requests, str(r.ls_requests)),
            str(r.throttled), _rate(r, r.cpu, f"{r.cpu:.2f}", 3), f"{r.max_rss_mb:.0f}", f"{r.wall:.2f}",
            f"{r.floor:.1f} ({r.ls_floor:.1f} / {r.sf_floor:.1f})", ratio, f"{r.emulator_busy:.1f}",
            busy_ratio)) + " |")
    lines.append("| target | | ≤ 5.0 | ≤ 10.5 | 0 | ≤ 0.30 | < 100 | no-op < 0.5 | | ≤ 1.25 | | |")
    lines.append("")
    for r in results:
        if r.report:
            sales = r.report.get("sales") or r.report.get("written")
            lines.append(f"{r.name}: exit {r.exit_code}; {json.dumps(sales)}; records {json.dumps(r.report.get('records'))}")
            if r.report.get("customers"):
                feed = {k: v for k, v in r.report["customers"].items() if isinstance(v, int) and v}
                lines.append(f"  customer feed: {json.dumps(feed)}, {len(r.report['customers']['enriched'])} enriched, "
                             f"{len(r.report['customers']['ambiguous_customers'])} ambiguous")
            if r.report.get("rollups"):
                rolled = r.report["rollups"]
                lines.append(f"  roll-ups: {rolled['accounts']} accounts, {rolled['updated']} updated, "
                             f"{len(rolled['rejected'])} rejected")
        else:
            lines.append(f"{r.name}: exit {r.exit_code}")
        lines += [f"  {detail}" for detail in r.details]
    for r in results:
        missed = r.shortfalls()
        lines.append(f"{r.name}: " + ("meets the targets" if not missed else "misses " + "; ".join(missed)))
    lines += notes
    lines.append("(n) = the absolute count or CPU seconds; emulators s = time inside the emulators' handlers, "
                 "latency excluded, which the wall time includes; wall / floor with emulators: each API's floor "
                 "plus its emulator's handler time (what the emulated APIs took on this machine), the larger, and at "
                 "least both emulators' handler time together (one process, one interpreter lock)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
