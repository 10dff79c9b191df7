"""Faults injected into the emulators for real; the end state in the Salesforce emulator is what counts."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from conftest import Cli, sell
from lspos_sync.emulators.lightspeed import LightspeedEmulator
from lspos_sync.emulators.salesforce import SalesforceEmulator


def assert_exactly_once(salesforce, lightspeed, sale_ids) -> None:
    """One transaction per sale, one line per sale line, one account per customer: nothing more, nothing less."""
    transactions = Counter(r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c"))
    assert transactions == Counter(f"182255-{s}" for s in sale_ids)
    expected_lines = sum(len(_lines(lightspeed.sale(s))) for s in sale_ids)
    line_keys = Counter(r["LS_Sale_Line_ID__c"] for r in salesforce.records("Sales_Line_Item__c"))
    assert sum(line_keys.values()) == expected_lines and max(line_keys.values(), default=1) == 1
    accounts = Counter(a["LS_Customer_ID__c"] for a in salesforce.records("Account") if a.get("LS_Customer_ID__c"))
    assert max(accounts.values(), default=1) == 1


def _lines(sale: dict) -> list:
    relation = sale.get("SaleLines") or {}
    found = relation.get("SaleLine", []) if isinstance(relation, dict) else []
    return found if isinstance(found, list) else [found]


def test_killed_at_random_moments_the_next_run_finishes_without_duplicates(tmp_path, state_path):
    # Latency on both sides stretches a run over a few seconds, so the kills land inside it.
    with LightspeedEmulator(latency=0.05) as lightspeed, \
            SalesforceEmulator(tmp_path / "tls", latency=0.6) as salesforce:
        shop, item = lightspeed.add_shop("Shop"), lightspeed.add_item("Ring")
        customers = [lightspeed.add_customer(f"K{i}", "Kill", email=f"k{i}@example.com") for i in range(40)]
        sales = [lightspeed.add_sale(shop, [{"item_id": item, "quantity": 1, "unit_price": "10"},
                                            {"item_id": item, "quantity": 2, "unit_price": "3"}],
                                     customer_id=customers[i % 40] if i % 3 else None) for i in range(400)]
        cli = Cli({**lightspeed.env(), **salesforce.env(), "LSPOS_STATE_PATH": str(state_path),
                   "LSPOS_SYNC_START": "2026-01-01"}, tmp_path)
        moments, interrupted = random.Random(7), 0
        for _ in range(6):
            process = cli.start("sync")
            time.sleep(moments.uniform(0.5, 2.5))
            interrupted += process.poll() is None
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert interrupted >= 4
        result = cli("sync")
        assert result.code == 0, result.stderr
        assert_exactly_once(salesforce, lightspeed, sales)


def test_killed_backfill_is_finished_by_running_it_again(tmp_path, state_path):
    with LightspeedEmulator(latency=0.05) as lightspeed, \
            SalesforceEmulator(tmp_path / "tls", latency=0.6) as salesforce:
        shop, item = lightspeed.add_shop("Shop"), lightspeed.add_item("Ring")
        at = datetime.now(timezone.utc) - timedelta(hours=5)
        sales = [lightspeed.add_sale(shop, [{"item_id": item, "quantity": 1, "unit_price": "10"}], at=at)
                 for _ in range(300)]
        cli = Cli({**lightspeed.env(), **salesforce.env(), "LSPOS_STATE_PATH": str(state_path)}, tmp_path)
        since = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
        process = cli.start("backfill", "--from", since)
        time.sleep(1.5)
        assert process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert cli("backfill", "--from", since).code == 0
        assert_exactly_once(salesforce, lightspeed, sales)


def test_lost_token_response_needs_no_reauthorisation(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique)
    lightspeed.drop_next(1, path_suffix="/auth/oauth/token")  # Lightspeed rotated, we never heard the answer
    result = cli("sync")
    assert result.code == 0, result.stderr
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]


def test_lock_contention_is_retried_until_the_rows_are_free(cli, lightspeed, salesforce, boutique):
    sales = [sell(lightspeed, boutique) for _ in range(5)]
    storm = iter(range(4))  # another integration holds the rows for the first four attempts
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: next(storm, None) is not None,
                                   "unable to obtain exclusive access to this record", error_code="UNABLE_TO_LOCK_ROW")
    result = cli("sync", "--json")
    assert result.code == 0, result.stderr
    assert_exactly_once(salesforce, lightspeed, sales)


@pytest.mark.parametrize("sobject", ["Account", "Sales_Transaction__c", "Sales_Line_Item__c"])
def test_an_upsert_that_raced_another_clients_upsert_of_the_same_key_is_sent_again_in_the_run(cli, lightspeed,
                                                                                             salesforce, boutique,
                                                                                             sobject):
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    bea = lightspeed.add_customer("Bea", "Reis", email="bea@example.com")
    sales = [sell(lightspeed, boutique, customer) for customer in (ana, bea, ana)]
    salesforce.upsert_race(2, sobject)  # another client wrote two of the new keys a moment before this run
    result = cli("sync", "--json")
    assert result.code == 0, result.stderr
    assert result.json["rejected"] == []
    assert_exactly_once(salesforce, lightspeed, sales)
    accounts = {a["LS_Customer_ID__c"]: a["Id"] for a in salesforce.records("Account")}
    linked = {t["LS_Sale_ID__c"]: t["Account__c"] for t in salesforce.records("Sales_Transaction__c")}
    assert [linked[f"182255-{sale}"] for sale in sales] == \
        [accounts[f"182255-{customer}"] for customer in (ana, bea, ana)]
    records = [rec for sub in _collections(salesforce, sobject) for rec in sub["body"]["records"]]
    assert len(records) == len({r[_KEYS[sobject]] for r in records}) + 2  # the two raced records went twice


def test_an_upsert_refused_as_a_duplicate_for_good_is_sent_again_once_then_parked(cli, lightspeed, salesforce,
                                                                                 boutique):
    sale = sell(lightspeed, boutique)
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: True,
                                   "duplicate value found: Ticket_Number__c duplicates value on record with id: "
                                   "a0B000000000001", error_code="DUPLICATE_VALUE")
    result = cli("sync", "--json")
    assert result.code == 3, result.stderr
    assert [r["sale_key"] for r in result.json["rejected"]] == [f"182255-{sale}"]
    assert len(_collections(salesforce, "Sales_Transaction__c")) == 2  # the first sending and one more


_KEYS = {"Account": "LS_Customer_ID__c", "Sales_Transaction__c": "LS_Sale_ID__c",
         "Sales_Line_Item__c": "LS_Sale_Line_ID__c"}


def _collections(salesforce, sobject: str) -> list[dict]:
    """The upsert collections of `sobject` the run sent."""
    return [sub for r in salesforce.requests if r.path.endswith("/composite") for sub in r.subrequests
            if sub["method"] == "PATCH" and f"/composite/sobjects/{sobject}/{_KEYS[sobject]}" in sub["url"]]


@pytest.mark.parametrize("status", [500, 504])
def test_heavy_pages_that_fail_are_read_in_smaller_pages(cli, lightspeed, salesforce, boutique, status):
    sales = [sell(lightspeed, boutique) for _ in range(120)]
    lightspeed.max_sale_page, lightspeed.heavy_page_status = 30, status
    result = cli("sync")
    assert result.code == 0, result.stderr
    assert_exactly_once(salesforce, lightspeed, sales)
    assert lightspeed.request_count("Sale.json", status=status) >= 1
    window = [r for r in lightspeed.requests if r.path.endswith("Sale.json") and r.status == 200]
    assert {r.query.get("limit", ["?"])[0] for r in window[-3:]} <= {"25"}  # read on in the smaller size


def test_transient_lightspeed_errors_and_dropped_connections_are_retried(cli, lightspeed, salesforce, boutique):
    sales = [sell(lightspeed, boutique) for _ in range(3)]
    lightspeed.fail_next(2, status=503)
    lightspeed.drop_next(1, path_suffix="Shop.json")
    result = cli("sync")
    assert result.code == 0, result.stderr
    assert_exactly_once(salesforce, lightspeed, sales)


@pytest.mark.parametrize("path", ["Sale.json", "SaleVoid.json", "Shop.json", "/auth/oauth/token"])
def test_a_body_cut_off_half_way_is_asked_for_again(cli, lightspeed, salesforce, boutique, path):
    sales = [sell(lightspeed, boutique) for _ in range(3)]
    lightspeed.void_sale(sales[0])
    lightspeed.cut_next(1, path_suffix=path)  # a 200 whose JSON ends half-way (on the token URL: a new pair minted)

    result = cli("sync")

    assert result.code == 0, result.stderr
    assert_exactly_once(salesforce, lightspeed, sales)
    assert lightspeed.request_count(path) == 2 + (path == "Sale.json")  # (the void is read by ID on Sale.json)


def test_a_cursor_that_does_not_advance_stops_the_run_and_the_next_run_writes_every_sale(cli, lightspeed, salesforce,
                                                                                         boutique):
    sales = [sell(lightspeed, boutique) for _ in range(5)]
    lightspeed.stick_next(1, path_suffix="Sale.json")  # page 2's next is page 2

    failed = cli("sync", constants={"lightspeed.client.PAGE_SIZE": 2})

    assert failed.code == 1
    assert failed.stderr == "Error: Lightspeed returned the same next page twice for Sale.json; stopping\n"
    assert cli("sync", constants={"lightspeed.client.PAGE_SIZE": 2}).code == 0
    assert_exactly_once(salesforce, lightspeed, sales)


def test_sale_edited_while_the_run_pages_is_caught_by_the_next_run(cli, lightspeed, salesforce, boutique):
    sales = [sell(lightspeed, boutique) for _ in range(250)]

    def merchant_edits(record) -> None:
        if record.path.endswith("Sale.json") and lightspeed.request_count("Sale.json") == 2:
            lightspeed.void_sale(sales[10])  # on page 1, already read: it jumps past the cursor

    lightspeed.after_request = merchant_edits
    assert cli("sync").code == 0
    lightspeed.after_request = None
    assert cli("sync").code == 0
    voided = {r["LS_Sale_ID__c"]: r["Status__c"] for r in salesforce.records("Sales_Transaction__c")}
    assert voided[f"182255-{sales[10]}"] == "Voided"
    assert_exactly_once(salesforce, lightspeed, sales)


@pytest.mark.parametrize("lightspeed_behind", [timedelta(minutes=15), timedelta(minutes=-15)],
                         ids=["host-ahead", "host-behind"])
def test_host_clock_off_by_more_than_the_look_back_misses_nothing(tmp_path, salesforce, state_path, lightspeed_behind):
    lightspeed_clock = lambda: datetime.now(timezone.utc) - lightspeed_behind  # noqa: E731 - the host's is the real one
    with LightspeedEmulator(clock=lightspeed_clock) as lightspeed:
        shop = lightspeed.add_shop("Shop")
        item = lightspeed.add_item("Ring")
        cli = Cli({**lightspeed.env(), **salesforce.env(), "LSPOS_STATE_PATH": str(state_path),
                   "LSPOS_SYNC_START": "2026-01-01", "LSPOS_LOOKBACK_MINUTES": "5"}, tmp_path)
        an_hour_ago = lightspeed_clock() - timedelta(hours=1)
        voided, edited = (lightspeed.add_sale(shop, [{"item_id": item, "quantity": 1, "unit_price": "100"}],
                                              at=an_hour_ago) for _ in range(2))
        parked = lightspeed.add_sale(shop, [{"item_id": item, "quantity": 1, "unit_price": "50"}], completed=False,
                                     at=an_hour_ago)
        first = cli("sync", "--json")
        assert first.code == 0, first.stderr
        assert abs(datetime.fromisoformat(first.json["window"]["to"]) - lightspeed_clock()) < timedelta(minutes=1)
        assert first.json["checkpoint"] == first.json["window"]["to"]  # Lightspeed's clock, not the host's
        assert first.stderr.count("host clock") == 1  # said once, as a warning
        # the lag is measured on Lightspeed's clock too
        assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["lag_minutes"] == 0
        assert cli("status", "--max-lag-minutes", "5").code == 0

        lightspeed.void_sale(voided)
        lightspeed.set_line_quantity(int(lightspeed.sale(edited)["SaleLines"]["SaleLine"]["saleLineID"]), 3)
        lightspeed.complete_sale(parked)
        second = lightspeed.add_sale(shop, [{"item_id": item, "quantity": 1, "unit_price": "200"}])
        assert cli("sync").code == 0

        written = {r["LS_Sale_ID__c"]: (r["Status__c"], r["Total__c"])
                   for r in salesforce.records("Sales_Transaction__c")}
        assert written == {f"182255-{voided}": ("Voided", 100.0), f"182255-{edited}": ("Completed", 300.0),
                           f"182255-{parked}": ("Completed", 50.0), f"182255-{second}": ("Completed", 200.0)}


def test_backfill_and_dry_run_end_at_lightspeeds_now(tmp_path, salesforce, state_path):
    lightspeed_clock = lambda: datetime.now(timezone.utc) + timedelta(minutes=15)  # noqa: E731 - host behind
    with LightspeedEmulator(clock=lightspeed_clock) as lightspeed:
        sale = lightspeed.add_sale(lightspeed.add_shop("Shop"),
                                   [{"item_id": lightspeed.add_item("Ring"), "quantity": 1, "unit_price": "10"}])
        cli = Cli({**lightspeed.env(), **salesforce.env(), "LSPOS_STATE_PATH": str(state_path)}, tmp_path)
        since = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
        preview = cli("dry-run", "--from", since, "--json")
        assert [plan["sale_id"] for plan in preview.json["plans"]] == [sale]
        assert cli("backfill", "--from", since).code == 0
        assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]


def test_api_reserve_stops_the_run_before_writing(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    salesforce.daily_api_limit = 100
    salesforce.api_calls = 94  # 6 left: the lookup leaves 5, which is the 5% reserve
    result = cli("sync", "--json")
    assert result.code == 1
    assert "LSPOS_API_RESERVE_PERCENT" in result.json["error"]
    assert salesforce.records("Sales_Transaction__c") == []
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] is None


def test_request_limit_exceeded_ends_the_run_cleanly(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    salesforce.daily_api_limit = 1
    salesforce.api_calls = 1
    result = cli("sync", "--json", env={"LSPOS_API_RESERVE_PERCENT": "0"})
    assert result.code == 1
    assert "REQUEST_LIMIT_EXCEEDED" in result.json["error"]


def test_request_limit_exceeded_with_allowance_left_is_waited_out_as_the_concurrent_limit(cli, lightspeed, salesforce,
                                                                                          boutique):
    sell(lightspeed, boutique)
    # the documented body, "TotalRequests Limit exceeded.", whichever limit it means (fact sheet §4)
    salesforce.fail_next(1, status=403, path_contains="/composite", error_code="REQUEST_LIMIT_EXCEEDED")

    result = cli("sync", "--json")

    assert result.code == 0, result.stderr
    assert len(salesforce.records("Sales_Transaction__c")) == 1
    assert any(r.path.split("?")[0].rstrip("/").endswith("/limits") for r in salesforce.requests)


def test_backfill_stopped_part_way_resumes_where_it_stopped(cli, lightspeed, salesforce, boutique):
    start = datetime.now(timezone.utc) - timedelta(days=2)
    sales = [sell(lightspeed, boutique, at=start + timedelta(seconds=20 * i)) for i in range(3500)]

    def outage(record) -> None:
        # Page 31 (the 32nd Sale.json request: the window's sales are counted first, for LSPOS_BULK_THRESHOLD)
        # is asked for only once the third batch (pages 21-30) is taken, which is after the second batch's
        # lookups went out with the end of the first batch's writes and the first batch was settled. The
        # second batch's writes are then on their way, or held for the third batch's lookups: Salesforce goes
        # down in the middle of the backfill, with one batch settled.
        if record.path.endswith("Sale.json") and lightspeed.request_count("Sale.json") == 32:
            salesforce.fail_next(1000, status=503)

    lightspeed.after_request = outage
    window = ("--from", (start - timedelta(hours=1)).isoformat(), "--to", (start + timedelta(days=1)).isoformat())
    assert cli("backfill", *window).code == 1
    lightspeed.after_request = None
    salesforce.clear_faults()
    assert 0 < len(salesforce.records("Sales_Transaction__c")) < 3500
    resumed = cli("backfill", *window, "--json")
    assert resumed.code == 0, resumed.stderr
    assert resumed.json["sales"]["read"] < 3500  # it did not start from the beginning
    assert_exactly_once(salesforce, lightspeed, sales)


def test_rejects_can_be_listed_retried_and_dropped(cli, lightspeed, salesforce, boutique):
    first, second = sell(lightspeed, boutique, lines=((1, "900"),)), sell(lightspeed, boutique, lines=((1, "800"),))
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: (r.get("Total__c") or 0) > 500, "Too big")
    assert cli("sync").code == 3

    listed = cli("rejects", "list", "--json")
    assert listed.code == 0
    assert {r["sale_key"] for r in listed.json["rejects"]} == {f"182255-{first}", f"182255-{second}"}
    assert all("Too big" in r["reason"] for r in listed.json["rejects"])

    salesforce.clear_validation_rules()
    retried = cli("rejects", "retry", f"182255-{first}", "--json")
    assert retried.code == 0, retried.stderr
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{first}"]

    assert cli("rejects", "drop", f"182255-{second}").code == 0
    assert cli("rejects", "list", "--json").json["rejects"] == []
    assert cli("rejects", "drop", f"182255-{second}").code == 2
    assert cli("rejects", "retry", "182255-999999").code == 2


def test_a_dropped_sale_is_left_alone_by_the_syncs_that_read_it_again_unchanged(cli, lightspeed, salesforce, boutique):
    minutes_ago = datetime.now(timezone.utc) - timedelta(minutes=5)  # inside the next syncs' 30-minute look-back
    sale = sell(lightspeed, boutique, lines=((1, "800"),), at=minutes_ago)
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: (r.get("Total__c") or 0) > 500, "Too big")
    assert cli("sync").code == 3
    assert cli("rejects", "drop", f"182255-{sale}").code == 0

    again = cli("sync", "--json", "-v")

    assert again.code == 0, again.stderr  # not parked again: the look-back read it, the drop left it alone
    assert again.json["rejected"] == [] and again.json["sales"]["read"] == 1
    assert f"left alone sale 182255-{sale}, dropped from the rejects" in again.stderr
    assert cli("rejects", "list", "--json").json["rejects"] == []
    salesforce.clear_validation_rules()
    assert cli("dry-run", "--json").json["sales"]["written"] == 0  # the preview of the next sync agrees
    assert cli("sync").code == 0 and salesforce.records("Sales_Transaction__c") == []


def test_a_dropped_sale_changed_in_lightspeed_after_the_drop_is_written(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique, lines=((1, "800"),), at=datetime.now(timezone.utc) - timedelta(minutes=5))
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: (r.get("Total__c") or 0) > 500, "Too big")
    assert cli("sync").code == 3
    assert cli("rejects", "drop", f"182255-{sale}").code == 0
    salesforce.clear_validation_rules()
    lightspeed.set_line_quantity(int(lightspeed.sale(sale)["SaleLines"]["SaleLine"]["saleLineID"]), 2)

    result = cli("sync", "--json")

    assert result.code == 0, result.stderr
    [written] = salesforce.records("Sales_Transaction__c")
    assert (written["LS_Sale_ID__c"], written["Total__c"]) == (f"182255-{sale}", 1600)


def test_a_backfill_writes_a_dropped_sale_again(cli, lightspeed, salesforce, boutique):
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    sale = sell(lightspeed, boutique, lines=((1, "800"),), at=an_hour_ago + timedelta(minutes=55))
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: (r.get("Total__c") or 0) > 500, "Too big")
    assert cli("sync").code == 3
    assert cli("rejects", "drop", f"182255-{sale}").code == 0
    salesforce.clear_validation_rules()

    result = cli("backfill", "--from", an_hour_ago.isoformat(), "--json")

    assert result.code == 0, result.stderr
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]


def test_parked_sale_whose_transaction_went_in_loses_the_lines_removed_since(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique, lightspeed.add_customer("Eli", "Park", email="eli@example.com"),
                lines=((1, "10.00"), (1, "20.00"), (1, "30.00")))
    salesforce.add_validation_rule("Sales_Line_Item__c", lambda r: r.get("Unit_Price__c") == 30, "Not that one")
    assert cli("sync").code == 3  # parked, with its transaction and two of its lines in Salesforce
    assert len(salesforce.records("Sales_Line_Item__c")) == 2
    relation = lightspeed.sale(sale)["SaleLines"]["SaleLine"]
    lightspeed.remove_line(sale, int(relation[1]["saleLineID"]))
    salesforce.clear_validation_rules()

    result = cli("sync", "--json")

    assert result.code == 0, result.stderr
    assert result.json["sales"]["retried"] == 1 and result.json["rejected"] == []
    assert_exactly_once(salesforce, lightspeed, [sale])  # the removed line is gone, the refused one is in


def test_voids_are_written_before_the_pages_so_a_failed_run_cannot_skip_them(cli, lightspeed, salesforce, boutique):
    two_hours_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    sale = sell(lightspeed, boutique, at=two_hours_ago)
    assert cli("sync").code == 0
    lightspeed.void_moves_updatetime = False
    lightspeed.void_sale(sale)

    # The window's pages fail for good (the reader asks for them while the run reads the voids); the voided
    # sale, read by ID, does not.
    lightspeed.fail_next(20, status=500, path_suffix="Sale.json", only_with="updatetime")

    assert cli("sync").code == 1

    assert {r["LS_Sale_ID__c"]: r["Status__c"] for r in salesforce.records("Sales_Transaction__c")} == \
        {f"182255-{sale}": "Voided"}


def test_read_newest_first_a_run_stopped_half_way_moves_no_checkpoint(cli, lightspeed, salesforce, boutique):
    """Where Lightspeed refuses the updatetime filter the window is read newest change first (docs/sync-rules.md):
    a batch settled says nothing of the older sales not read yet, even when all its sales share one update time."""
    lightspeed.reject_updatetime_filter = True
    now = datetime.now(timezone.utc)
    newest = [sell(lightspeed, boutique, at=now - timedelta(hours=1)) for _ in range(2)]  # one batch, one time
    older = [sell(lightspeed, boutique, at=now - timedelta(hours=5, seconds=i)) for i in range(10)]

    def lightspeed_refuses_a_later_page(record) -> None:  # the fifth page, once four were read
        if record.query.get("sort") == ["-updatetime"] and record.status == 200 \
                and lightspeed.request_count("Sale.json", status=200) == 4:
            lightspeed.fail_next(1, status=400, only_with="after")

    lightspeed.after_request = lightspeed_refuses_a_later_page
    small = {"engine.BATCH_SALES": 2, "lightspeed.client.PAGE_SIZE": 2}
    stopped = cli("sync", "--json", constants=small)
    lightspeed.after_request = None

    assert stopped.code == 1 and "refused the Sale query" in stopped.json["error"]
    assert {f"182255-{sale}" for sale in newest} <= {r["LS_Sale_ID__c"]
                                                      for r in salesforce.records("Sales_Transaction__c")}
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] is None
    assert cli("sync", constants=small).code == 0
    assert_exactly_once(salesforce, lightspeed, newest + older)


def test_records_counted_are_those_salesforce_holds_not_those_sent_again(cli, lightspeed, salesforce, boutique):
    sales = [sell(lightspeed, boutique) for _ in range(5)]
    storm = iter(range(3))
    salesforce.add_validation_rule("Sales_Transaction__c", lambda r: next(storm, None) is not None,
                                   "unable to obtain exclusive access to this record", error_code="UNABLE_TO_LOCK_ROW")
    result = cli("sync", "--json")
    assert result.code == 0, result.stderr
    assert result.json["records"]["transactions"] == 5 and result.json["records"]["lines"] == 5
    assert_exactly_once(salesforce, lightspeed, sales)


def test_bad_data_is_written_with_what_is_valid(cli, lightspeed, salesforce, boutique):
    long_name = "Ré" + "x" * 198
    customer = lightspeed.add_customer("Zoë\x00\u200b", long_name, email="not-an-email",
                                       phones={"Mobile": "call me maybe", "Home": "+44 20 7946 0958"})
    items = [lightspeed.add_item(f"Article\t{i} \x07« spécial »") for i in range(2)]
    lines = [{"item_id": items[i % 2] if i % 50 else None, "quantity": 1, "unit_price": "1.005"} for i in range(500)]
    big = lightspeed.add_sale(boutique.shop, lines, customer_id=customer)

    result = cli("sync", "--json")

    assert result.code == 0, result.stderr
    assert_exactly_once(salesforce, lightspeed, [big])
    [account] = [a for a in salesforce.records("Account") if a.get("IsPersonAccount")]
    assert len(account["LastName"]) == 80 and account["FirstName"] == "Zoë"
    assert account["PersonEmail"] is None and account["PersonMobilePhone"] == "call me maybe"
    products = {r["Product_Name__c"] for r in salesforce.records("Sales_Line_Item__c")}
    assert products == {"Article 0 « spécial »", "Article 1 « spécial »", None}, products  # no item: no product


def test_burst_limiter_is_respected(tmp_path, salesforce, state_path):
    with LightspeedEmulator(burst_limit=3) as lightspeed:
        shop, item = lightspeed.add_shop("Shop"), lightspeed.add_item("Ring")
        sales = [lightspeed.add_sale(shop, [{"item_id": item, "quantity": 1, "unit_price": "5"}]) for _ in range(700)]
        cli = Cli({**lightspeed.env(), **salesforce.env(), "LSPOS_STATE_PATH": str(state_path),
                   "LSPOS_SYNC_START": "2026-01-01"}, tmp_path)
        result = cli("sync", "--json")
        assert result.code == 0, result.stderr
        assert lightspeed.request_count(status=429) == 0
        assert_exactly_once(salesforce, lightspeed, sales)


def test_salesforce_outage_over_several_runs_then_catch_up(cli, lightspeed, salesforce, boutique):
    first = [sell(lightspeed, boutique) for _ in range(3)]
    assert cli("sync").code == 0
    held = cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"]
    salesforce.fail_next(10_000, status=503)  # Salesforce is down
    during = []
    for _ in range(3):  # three cron runs in the outage
        during.append(sell(lightspeed, boutique))
        failed = cli("sync", "--json")
        assert failed.code == 1
        shown = cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]
        assert shown["cursor"] == held and shown["lag_minutes"] is not None  # held, and the lag is told
    salesforce.clear_faults()

    assert cli("sync").code == 0

    assert_exactly_once(salesforce, lightspeed, first + during)


def test_sales_across_a_daylight_saving_change_are_each_written_once(tmp_path, salesforce, state_path):
    with LightspeedEmulator() as lightspeed:
        shop, item = lightspeed.add_shop("Madison Avenue", "America/New_York"), lightspeed.add_item("Ring")
        # New York springs forward at 2026-03-08 07:00 UTC: sales every 20 minutes across it
        start = datetime(2026, 3, 8, 5, 0, tzinfo=timezone.utc)
        sales = [lightspeed.add_sale(shop, [{"item_id": item, "quantity": 1, "unit_price": "10"}],
                                     at=start + timedelta(minutes=20 * i)) for i in range(12)]
        cli = Cli({**lightspeed.env(), **salesforce.env(), "LSPOS_STATE_PATH": str(state_path)}, tmp_path)
        for window in (("2026-03-08T05:00:00Z", "2026-03-08T07:00:00Z"), ("2026-03-08T06:00:00Z", "2026-03-08T09:00:00Z")):
            assert cli("backfill", "--from", window[0], "--to", window[1]).code == 0
        assert_exactly_once(salesforce, lightspeed, sales)
        dates = sorted(r["Transaction_Date__c"] for r in salesforce.records("Sales_Transaction__c"))
        assert dates[0].startswith("2026-03-08T05:00") and dates[-1].startswith("2026-03-08T08:40")
