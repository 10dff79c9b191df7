"""What a writer is: it takes a batch's whole plan of writes and sets each one's outcome once Salesforce has
answered it. `CompositeWriter` sends them through `/composite`; `RecordingSink` (dry-run) counts them instead.

Queries go through the writer too, so that a writer that holds writes back (to send full requests) can send a
query behind every write it must see.

A third, `BulkWriter` (salesforce/bulk.py, `backfill --bulk`), takes the same plans but holds a whole round of
them on disk and sends them as Bulk API 2.0 jobs on `flush`: it does not keep the `Write`s, so their outcomes
come back by row (the key each failed row names) to `BulkBackfill` (bulk.py), which settles the round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# The kinds of write, in the order they are sent inside and across requests: accounts exist before the
# transactions that point at them, transactions before their lines, and stale lines are deleted before the lines
# are written: a line moved to another sale of the batch is deleted under its old sale before it is written under
# its new one (the master-detail is not reparentable: Salesforce refuses to move an existing line).
CREATE_ACCOUNTS, UPDATE_ACCOUNTS, TRANSACTIONS, LINES, DELETE_LINES = (
    "create_accounts", "update_accounts", "transactions", "lines", "delete_lines")
ORDER = (CREATE_ACCOUNTS, UPDATE_ACCOUNTS, TRANSACTIONS, DELETE_LINES, LINES)


@dataclass(slots=True)  # a run holds one per record of a batch on its way
class Write:
    """One record to write (or, for deletes, one Id), the sales that depend on it, and its outcome."""

    kind: str
    record: dict[str, Any] | str | None  # None once Salesforce has accepted it: a batch waiting to be settled
    sale_keys: tuple[str, ...]           # holds outcomes only
    customer_key: str | None = None  # for account writes: whose account
    filled: tuple[str, ...] = ()  # for account updates: the empty fields enrichment fills
    # the outcome, set by the writer
    error: str | None = None
    transient: bool = False  # the error says "try again" (a lock, a busy server), not "no"
    created: bool | None = None
    id: str | None = None
    answered: bool = False  # Salesforce's last word on it is in


@dataclass
class WriteStats:
    records: dict[str, int] = field(default_factory=dict)  # records Salesforce accepted, by kind of write


class Writer(Protocol):
    """Where a run's writes go, and its queries, which must see the writes handed over before them."""

    stats: WriteStats

    def write(self, writes: list[Write]) -> None:
        """Takes a whole plan: a batch's writes of every kind, in any order (they are sent in `ORDER`). Each
        write's outcome (`answered`, then `id` and `created`, or `error` and `transient`) is set on it once
        Salesforce has answered, which may be during a later call: a writer may hold writes back."""

    def queries(self, statements: list[str], optional: frozenset[int] = frozenset(),
                *, after_lines: bool = False) -> list[list[dict[str, Any]] | None]:
        """The answers, each statement followed to its last page, after every write handed over before that
        the statement may read (lines and line deletes only `after_lines`). A refused statement fails the run,
        unless its index is `optional`: then its answer is None."""

    def flush(self) -> None:
        """Sends whatever is held: afterwards every write handed over is answered."""
