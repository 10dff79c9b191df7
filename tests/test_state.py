"""The state store's record of outcomes: sales and customers (LSPOS_SYNC_CUSTOMERS) follow one rule."""

from __future__ import annotations

import pytest

from lspos_sync.state import StateStore


def _sales(store: StateStore, done: dict, refused: dict) -> tuple[dict, list]:
    store.record_outcomes("182255", done, refused)
    return store.written(["182255-1"]), [(r.sale_key, r.sale_id, r.reason, r.attempts) for r in store.rejects()]


def _customers(store: StateStore, done: dict, refused: dict) -> tuple[dict, list]:
    store.record_customer_outcomes("182255", done, refused)
    return store.settled_customers(["182255-1"]), \
        [(c.customer_key, c.customer_id, c.reason, c.attempts) for c in store.customer_rejects()]


@pytest.mark.parametrize("record", [_sales, _customers], ids=["sales", "customers"])
def test_a_refused_record_forgets_its_hash_counts_attempts_and_leaves_the_list_once_done(record, tmp_path):
    with StateStore(tmp_path / "state.db") as store:
        assert record(store, {"182255-1": ("hash-1", "Created")}, {}) == ({"182255-1": ("hash-1", "Created")}, [])

        assert record(store, {}, {"182255-1": (1, "DUPLICATES_DETECTED")}) == \
            ({}, [("182255-1", 1, "DUPLICATES_DETECTED", 1)])
        assert record(store, {}, {"182255-1": (1, "FIELD_CUSTOM_VALIDATION_EXCEPTION")}) == \
            ({}, [("182255-1", 1, "FIELD_CUSTOM_VALIDATION_EXCEPTION", 2)])

        assert record(store, {"182255-1": ("hash-2", "Linked")}, {}) == ({"182255-1": ("hash-2", "Linked")}, [])


def test_sales_and_customers_sharing_a_key_are_kept_apart(tmp_path):
    with StateStore(tmp_path / "state.db") as store:
        store.record_outcomes("182255", {}, {"182255-1": (1, "sale refused")})
        store.record_customer_outcomes("182255", {"182255-1": ("hash", "created")}, {})

        assert [r.reason for r in store.rejects()] == ["sale refused"]
        assert store.customer_rejects() == [] and store.written(["182255-1"]) == {}
        assert store.settled_customers(["182255-1"]) == {"182255-1": ("hash", "created")}


def test_the_run_history_keeps_ninety_days_and_always_the_newest_hundred_runs(tmp_path):
    import sqlite3
    from datetime import timedelta

    from lspos_sync.state import iso, utcnow

    path = tmp_path / "state.db"
    StateStore(path).close()
    db = sqlite3.connect(path)
    old, recent = iso(utcnow() - timedelta(days=91)), iso(utcnow() - timedelta(days=89))
    db.executemany("INSERT INTO run (command, account_id, started_at, outcome) VALUES ('sync', '182255', ?, 'ok')",
                   [(old,)] * 150 + [(recent,)] * 20 + [(old,)] * 90)  # the last 90 out of order (a clock set back)
    db.commit()
    db.close()

    with StateStore(path) as store:
        store.start_run("sync", "182255")
        started = [run["started_at"] for run in store.recent_runs(1_000)]

    # the 150 oldest go; the 20 recent stay; of the 90 old ones at the end, those among the newest 100 rows stay
    assert len(started) == 1 + 90 + 20
    assert started[1:91] == [old] * 90 and started[91:] == [recent] * 20


def test_a_run_left_running_by_a_kill_is_marked_interrupted_by_the_next_run_of_its_account(tmp_path):
    with StateStore(tmp_path / "state.db") as store:
        killed = store.start_run("sync", "182255")
        other = store.start_run("sync", "190001")
        store.start_run("sync", "182255")
        outcomes = {run["id"]: run["outcome"] for run in store.recent_runs(10)}

    assert outcomes[killed] == "interrupted" and outcomes[other] == "running"
