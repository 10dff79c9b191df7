"""The SQLite state store: checkpoints, rotating Lightspeed tokens, rejected sales, written sales, customers settled
and refused (LSPOS_SYNC_CUSTOMERS), runs, lock."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from lspos_sync.errors import LockHeld

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoint (
    account_id TEXT PRIMARY KEY,
    cursor TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS backfill (
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    progress TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
);
CREATE TABLE IF NOT EXISTS token (
    account_id TEXT PRIMARY KEY,
    refresh_token TEXT NOT NULL,
    access_token TEXT,
    expires_at TEXT,
    seed TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reject (
    sale_key TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    sale_id INTEGER NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS written_sale (
    sale_key TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    match_status TEXT NOT NULL,
    written_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS written_customer (
    customer_key TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    decision TEXT NOT NULL,
    written_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS customer_reject (
    customer_key TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    customer_id INTEGER NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
-- Sales given up on by `rejects drop`, and when: a sync's look-back would read them again and park them again.
CREATE TABLE IF NOT EXISTS dropped_sale (
    sale_key TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    dropped_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollup_pending (
    account_id TEXT NOT NULL,
    salesforce_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (account_id, salesforce_id)
);
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    command TEXT NOT NULL,
    account_id TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    outcome TEXT NOT NULL DEFAULT 'running',
    exit_code INTEGER,
    window_from TEXT,
    window_to TEXT,
    summary TEXT
);
-- Ten-minute runs add some 52,000 run rows a year: the history is kept for RUN_HISTORY (start_run), found by
-- time, and a run a kill left marked running is found without reading the rest.
CREATE INDEX IF NOT EXISTS run_started ON run (started_at);
CREATE INDEX IF NOT EXISTS run_running ON run (id) WHERE outcome = 'running';
"""

# How long the run history is kept (`status` reads the last few runs); the newest RUNS_KEPT rows stay whatever
# their age, so a tool that has not run for months still shows how its last runs ended.
RUN_HISTORY = timedelta(days=90)
RUNS_KEPT = 100
# How much earlier than the moment of a `rejects drop` (on Lightspeed's clock, whose lead the host knows only to
# the second) the sales it leaves alone must have changed last.
DROP_SLACK = timedelta(seconds=5)


# The run locks this process holds: lock file -> [descriptor, holders]. flock locks belong to an open file, so
# a second open of the same file in this process would find it locked by ourselves.
_HELD: dict[str, list[int]] = {}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat()


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def default_state_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "lspos-sync" / "state.db"


@dataclass(frozen=True)
class Tokens:
    refresh_token: str
    access_token: str | None
    expires_at: datetime | None
    seed: str  # fingerprint of the LIGHTSPEED_REFRESH_TOKEN that started this chain


@dataclass(frozen=True)
class Reject:
    sale_key: str
    account_id: str
    sale_id: int
    reason: str
    attempts: int
    first_seen: str
    last_seen: str


@dataclass(frozen=True)
class ParkedCustomer:
    """A customer (LSPOS_SYNC_CUSTOMERS) whose Person Account Salesforce refused, retried by every run."""

    customer_key: str
    account_id: str
    customer_id: int
    reason: str
    attempts: int
    first_seen: str
    last_seen: str


class StateStore:
    """One SQLite file per deployment; every write is its own transaction, so each is atomic."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Tokens live here: the file is private to its owner from the first byte.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)
        # The store's locks are named from its real path: a run that reaches the file through a symlink takes the same.
        self._real_path = os.path.realpath(self.path)
        # One connection, shared with the thread that reads Lightspeed ahead (it stores rotated tokens);
        # every use holds the mutex.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._mutex = threading.RLock()
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # A run reads the store by key, a batch at a time: a 256 KB page cache (SQLite's default is 2 MB) holds what
        # that needs, and the operating system caches the file. A 100,000-sale backfill peaked 3 MB lower with it.
        self._db.execute("PRAGMA cache_size=-256")
        self._db.executescript(_SCHEMA)
        self._locks: list[str] = []  # the run locks this store took

    def close(self) -> None:
        self.release_lock()
        self._db.close()

    def __enter__(self) -> "StateStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._mutex:
            return self._db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        rows = self._query(sql, args)
        return rows[0] if rows else None

    # -- the run lock: an flock the kernel releases when the process dies, so a killed run leaves nothing behind
    def acquire_lock(self, account_id: str) -> None:
        """One run at a time per Lightspeed account and state store; several accounts may run side by side.
        A lock this process already holds (all of LIGHTSPEED_ACCOUNTS are taken up front) is taken again."""
        path = self.lock_path(account_id)
        if path in _HELD:
            _HELD[path][1] += 1
        else:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(f"another lspos-sync run holds the lock of account {account_id} on {self.path}; "
                               "this one did nothing") from None
            _HELD[path] = [fd, 1]
        self._locks.append(path)

    def lock_path(self, account_id: str) -> str:
        return f"{self._real_path}.{account_id}.lock"

    def release_lock(self) -> None:
        for path in self._locks:
            held = _HELD[path]
            held[1] -= 1
            if held[1] == 0:
                fcntl.flock(held[0], fcntl.LOCK_UN)
                os.close(held[0])
                del _HELD[path]
        self._locks = []

    def rollup_lock(self) -> AbstractContextManager[None]:
        """Serialises roll-ups across processes: two Lightspeed accounts' runs may share a Person Account, and
        each must read the aggregates after the other's write."""
        return self._waiting_lock("rollup-lock")

    def token_lock(self) -> AbstractContextManager[None]:
        """Serialises token refreshes across processes: two refreshes of one token break the chain."""
        return self._waiting_lock("token-lock")

    @contextmanager
    def _waiting_lock(self, suffix: str) -> Iterator[None]:
        """An flock on `<state>.<suffix>`, waited for (unlike the run lock, which is refused at once)."""
        fd = os.open(f"{self._real_path}.{suffix}", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- checkpoint
    def checkpoint(self, account_id: str) -> datetime | None:
        row = self._one("SELECT cursor FROM checkpoint WHERE account_id = ?", (account_id,))
        return parse_iso(row["cursor"]) if row else None

    def set_checkpoint(self, account_id: str, cursor: datetime) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO checkpoint (account_id, cursor, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(account_id) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                (account_id, iso(cursor), iso(utcnow())))

    def clear_checkpoint(self, account_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM checkpoint WHERE account_id = ?", (account_id,))

    def checkpoints(self) -> dict[str, dict[str, str]]:
        rows = self._query("SELECT account_id, cursor, updated_at FROM checkpoint ORDER BY account_id")
        return {r["account_id"]: {"cursor": r["cursor"], "updated_at": r["updated_at"]} for r in rows}

    # -- where a bounded backfill window stopped, so that running it again resumes there
    def backfill_progress(self, account_id: str, name: str) -> datetime | None:
        row = self._one("SELECT progress FROM backfill WHERE account_id = ? AND name = ?",
                               (account_id, name))
        return parse_iso(row["progress"]) if row else None

    def set_backfill_progress(self, account_id: str, name: str, progress: datetime) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO backfill (account_id, name, progress, updated_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(account_id, name) DO UPDATE SET progress = excluded.progress, "
                       "updated_at = excluded.updated_at", (account_id, name, iso(progress), iso(utcnow())))

    def clear_backfill_progress(self, account_id: str, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM backfill WHERE account_id = ? AND name = ?", (account_id, name))

    # -- Lightspeed tokens
    def tokens(self, account_id: str) -> Tokens | None:
        row = self._one("SELECT * FROM token WHERE account_id = ?", (account_id,))
        if row is None:
            return None
        return Tokens(row["refresh_token"], row["access_token"], parse_iso(row["expires_at"]), row["seed"])

    def save_tokens(self, account_id: str, tokens: Tokens) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO token (account_id, refresh_token, access_token, expires_at, seed, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(account_id) DO UPDATE SET "
                "refresh_token = excluded.refresh_token, access_token = excluded.access_token, "
                "expires_at = excluded.expires_at, seed = excluded.seed, updated_at = excluded.updated_at",
                (account_id, tokens.refresh_token, tokens.access_token,
                 iso(tokens.expires_at) if tokens.expires_at else None, tokens.seed, iso(utcnow())))

    # -- rejected sales, kept until a later run writes them
    def rejects(self, account_id: str | None = None) -> list[Reject]:
        return [Reject(r["sale_key"], r["account_id"], r["sale_id"], r["reason"], r["attempts"],
                       r["first_seen"], r["last_seen"]) for r in self._parked("reject", "sale_key", account_id)]

    def drop_reject(self, sale_key: str) -> bool:
        """Gives up on a parked sale: no longer retried, and left alone by a sync that reads it again unchanged
        since (`dropped_sales`). The moment is on Lightspeed's clock, as the account's last run measured the host's
        lead, less DROP_SLACK: a change made after the drop is never taken for one before it. Drops older than
        RUN_HISTORY are forgotten."""
        row = self._one("SELECT account_id FROM reject WHERE sale_key = ?", (sale_key,))
        if row is None:
            return False
        now = utcnow()
        dropped_at = now - self.host_clock_ahead(row["account_id"]) - DROP_SLACK
        with self.transaction() as db:
            if db.execute("DELETE FROM reject WHERE sale_key = ?", (sale_key,)).rowcount == 0:
                return False  # a run wrote it meanwhile
            db.execute("DELETE FROM dropped_sale WHERE dropped_at < ?", (iso(now - RUN_HISTORY),))
            db.execute("INSERT INTO dropped_sale (sale_key, account_id, dropped_at) VALUES (?, ?, ?) "
                       "ON CONFLICT(sale_key) DO UPDATE SET dropped_at = excluded.dropped_at",
                       (sale_key, row["account_id"], iso(dropped_at)))
        return True

    def dropped_sales(self, account_id: str) -> dict[str, datetime]:
        """The sales of an account given up on by `rejects drop`: sale key -> when."""
        return {r["sale_key"]: datetime.fromisoformat(r["dropped_at"])
                for r in self._query("SELECT sale_key, dropped_at FROM dropped_sale WHERE account_id = ?", (account_id,))}

    def _parked(self, table: str, key_column: str, account_id: str | None) -> list[sqlite3.Row]:
        """The rows of a table of parked things (sales, customers), oldest first, of one account or all."""
        query, args = f"SELECT * FROM {table}", ()
        if account_id is not None:
            query, args = query + " WHERE account_id = ?", (account_id,)
        return self._query(query + f" ORDER BY first_seen, {key_column}", args)

    def _unpark(self, table: str, key_column: str, key: str) -> bool:
        with self.transaction() as db:
            return db.execute(f"DELETE FROM {table} WHERE {key_column} = ?", (key,)).rowcount > 0

    def record_outcomes(self, account_id: str, written: dict[str, tuple[str, str]],
                        rejected: dict[str, tuple[int, str]]) -> None:
        """In one transaction: sales written (key -> (hash, match status)) leave the reject list and
        remember their hash; sales rejected (key -> (sale id, reason)) join it or count one more attempt."""
        self._record("written_sale", "sale_key", "match_status", "reject", "sale_id", account_id, written, rejected)

    def written(self, sale_keys: list[str]) -> dict[str, tuple[str, str]]:
        """sale key -> (content hash, match status) of the sales already written as they are now."""
        return {r["sale_key"]: (r["content_hash"], r["match_status"]) for r in self._rows_of(
            "SELECT sale_key, content_hash, match_status FROM written_sale WHERE sale_key IN ({})", sale_keys)}

    # -- LSPOS_SYNC_CUSTOMERS: customers brought to a Person Account (or found to need nothing), and those refused
    def settled_customers(self, customer_keys: list[str]) -> dict[str, tuple[str, str]]:
        """customer key -> (content hash, decision) of the customers settled as they are now."""
        return {r["customer_key"]: (r["content_hash"], r["decision"]) for r in self._rows_of(
            "SELECT customer_key, content_hash, decision FROM written_customer WHERE customer_key IN ({})",
            customer_keys)}

    def _rows_of(self, statement: str, keys: list[str]) -> list[sqlite3.Row]:
        """The rows of `statement` for the keys, its `IN ({})` filled 500 keys at a time (SQLite's limit on
        parameters is lower than a batch's keys)."""
        rows: list[sqlite3.Row] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows += self._query(statement.format(",".join("?" * len(chunk))), chunk)
        return rows

    def record_customer_outcomes(self, account_id: str, settled: dict[str, tuple[str, str]],
                                 refused: dict[str, tuple[int, str]]) -> None:
        """In one transaction: customers settled (key -> (hash, decision)) leave the reject list and remember
        their hash; customers refused (key -> (customer id, reason)) join it or count one more attempt."""
        self._record("written_customer", "customer_key", "decision", "customer_reject", "customer_id", account_id,
                     settled, refused)

    def _record(self, done_table: str, key: str, done_column: str, reject_table: str, id_column: str,
                account_id: str, done: dict[str, tuple[str, str]], refused: dict[str, tuple[int, str]]) -> None:
        """The shape of both: a record done (key -> (hash, `done_column`)) leaves `reject_table` and remembers its
        hash in `done_table`; a record refused (key -> (Lightspeed id, reason)) leaves `done_table` and joins
        `reject_table`, or counts one more attempt there. Table and column names are ours, never input."""
        now = iso(utcnow())
        with self.transaction() as db:
            for record_key, (digest, value) in done.items():
                db.execute(f"DELETE FROM {reject_table} WHERE {key} = ?", (record_key,))
                db.execute(
                    f"INSERT INTO {done_table} ({key}, content_hash, {done_column}, written_at) VALUES (?, ?, ?, ?) "
                    f"ON CONFLICT({key}) DO UPDATE SET content_hash = excluded.content_hash, "
                    f"{done_column} = excluded.{done_column}, written_at = excluded.written_at",
                    (record_key, digest, value, now))
            for record_key, (record_id, reason) in refused.items():
                db.execute(f"DELETE FROM {done_table} WHERE {key} = ?", (record_key,))
                db.execute(
                    f"INSERT INTO {reject_table} ({key}, account_id, {id_column}, reason, attempts, first_seen, "
                    f"last_seen) VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT({key}) DO UPDATE SET "
                    f"reason = excluded.reason, attempts = {reject_table}.attempts + 1, last_seen = excluded.last_seen",
                    (record_key, account_id, record_id, reason, now, now))

    def forget_customer_rejects(self, customer_keys: list[str]) -> None:
        """Parked customers there is nothing more to do for (archived, or gone from Lightspeed)."""
        with self.transaction() as db:
            db.executemany("DELETE FROM customer_reject WHERE customer_key = ?", [(k,) for k in customer_keys])

    def customer_rejects(self, account_id: str | None = None) -> list[ParkedCustomer]:
        return [ParkedCustomer(r["customer_key"], r["account_id"], r["customer_id"], r["reason"], r["attempts"],
                               r["first_seen"], r["last_seen"])
                for r in self._parked("customer_reject", "customer_key", account_id)]

    def drop_customer_reject(self, customer_key: str) -> bool:
        return self._unpark("customer_reject", "customer_key", customer_key)

    # -- loyalty roll-ups Salesforce refused, recomputed by the next run
    def pending_rollups(self, account_id: str) -> list[str]:
        rows = self._query("SELECT salesforce_id FROM rollup_pending WHERE account_id = ? ORDER BY salesforce_id",
                           (account_id,))
        return [r["salesforce_id"] for r in rows]

    def add_pending_rollups(self, account_id: str, salesforce_ids: set[str]) -> None:
        """Accounts whose transactions a batch changed, kept until their roll-ups are written."""
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO rollup_pending (account_id, salesforce_id, reason) "
                           "VALUES (?, ?, 'transactions changed')", [(account_id, i) for i in sorted(salesforce_ids)])

    def set_pending_rollups(self, account_id: str, refused: dict[str, str]) -> None:
        """Replaces the account's pending roll-ups with `refused` (Salesforce Id -> reason)."""
        with self.transaction() as db:
            db.execute("DELETE FROM rollup_pending WHERE account_id = ?", (account_id,))
            db.executemany("INSERT INTO rollup_pending (account_id, salesforce_id, reason) VALUES (?, ?, ?)",
                           [(account_id, sf_id, reason) for sf_id, reason in refused.items()])

    # -- run history
    def start_run(self, command: str, account_id: str | None) -> int:
        """A run row; its window is set once known (`set_run_window`)."""
        with self.transaction() as db:
            # Called with the run lock held: a run still marked running was killed before it could finish.
            db.execute("UPDATE run SET outcome = 'interrupted', ended_at = ? WHERE outcome = 'running' "
                       "AND (account_id IS ? OR account_id IS NULL)", (iso(utcnow()), account_id))
            db.execute("DELETE FROM run WHERE started_at < ? AND id <= (SELECT max(id) FROM run) - ?",
                       (iso(utcnow() - RUN_HISTORY), RUNS_KEPT))
            cursor = db.execute("INSERT INTO run (command, account_id, started_at) VALUES (?, ?, ?)",
                                (command, account_id, iso(utcnow())))
            return int(cursor.lastrowid)

    def set_run_window(self, run_id: int, window_from: datetime, window_to: datetime) -> None:
        """The run's window, known once Lightspeed's clock is read (after the run started)."""
        with self.transaction() as db:
            db.execute("UPDATE run SET window_from = ?, window_to = ? WHERE id = ?",
                       (iso(window_from), iso(window_to), run_id))

    def host_clock_ahead(self, account_id: str) -> timedelta:
        """How far the host's clock ran ahead of Lightspeed's (negative: behind) at the account's last run that
        read it; zero before any did."""
        row = self._one("SELECT json_extract(summary, '$.host_clock_ahead_seconds') AS ahead FROM run "
                        "WHERE account_id = ? AND json_extract(summary, '$.host_clock_ahead_seconds') IS NOT NULL "
                        "ORDER BY id DESC LIMIT 1", (account_id,))
        return timedelta(seconds=row["ahead"] if row else 0)

    def finish_run(self, run_id: int, outcome: str, exit_code: int, summary: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE run SET ended_at = ?, outcome = ?, exit_code = ?, summary = ? WHERE id = ?",
                       (iso(utcnow()), outcome, exit_code, json.dumps(summary, default=str), run_id))

    def last_run(self, command: str | None = None) -> dict[str, Any] | None:
        query, args = "SELECT * FROM run", ()
        if command is not None:
            query, args = query + " WHERE command = ?", (command,)
        row = self._one(query + " ORDER BY id DESC LIMIT 1", args)
        if row is None:
            return None
        run = dict(row)
        run["summary"] = json.loads(run["summary"]) if run["summary"] else None
        return run

    def recent_runs(self, limit: int, commands: tuple[str, ...] | None = None,
                    account_id: str | None = None) -> list[dict[str, Any]]:
        """The last `limit` runs (of these commands, of this account), newest first, each with its summary parsed."""
        conditions, args = [], ()
        if commands:
            conditions.append(f"command IN ({','.join('?' * len(commands))})")
            args += tuple(commands)
        if account_id is not None:
            conditions.append("(account_id = ? OR account_id IS NULL)")  # older rows name no account
            args += (account_id,)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._query(f"SELECT * FROM run{where} ORDER BY id DESC LIMIT ?", (*args, limit))
        return [{**dict(row), "summary": json.loads(row["summary"]) if row["summary"] else None} for row in rows]
