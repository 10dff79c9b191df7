"""Review of fault and drift scenarios (branch review-faults): each test is a scenario the contract covers and in
which, at the time of writing, the product does something else. They fail on purpose; the product is not fixed
here. Each docstring says what happens instead and where in the code."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from conftest import sell


def _transactions(org) -> dict[str, dict]:
    return {t["LS_Sale_ID__c"]: t for t in org.records("Sales_Transaction__c")}


def test_a_sale_written_unlinked_because_its_customer_was_not_sent_is_linked_once_lightspeed_sends_it(
        cli, lightspeed, salesforce, boutique):
    """A sale whose customer Lightspeed did not send (the Customer relation empty and Customer.json leaving the
    customer out: a malformed payload, `client._valid`) is written Guest and named incomplete: fine. Once Lightspeed
    sends the customer again, re-reading the sale (the look-back) and the remedy the docs give for such gaps (
    failure-modes.md: "edit the sale or run a backfill over its date to write it again") should link it.

    They do not: the content hash (mapping.content_hash over transaction_record + line_records) leaves out the
    customer and the link, and `Planner.changed` (planning.py:77-81) skips a sale whose hash is unchanged unless its
    last match was Ambiguous; a backfill's `verify_unchanged` only checks the transaction still exists. The sale
    stays Guest with no account for good, though its client is known."""
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    sale = sell(lightspeed, boutique, ana, at=datetime.now(timezone.utc) - timedelta(minutes=5))
    lightspeed.corrupt_sale(sale, Customer="")  # the relation came back empty
    lightspeed.edit_customer(ana, firstName=None)  # and Customer.json answers a customer that does not read

    first = cli("sync", "--json")
    assert first.code == 0, first.stderr
    assert _transactions(salesforce)[f"182255-{sale}"]["Match_Status__c"] == "Guest"
    assert [g["sale_key"] for g in first.json["gaps"]] == [f"182255-{sale}"]

    lightspeed.edit_customer(ana, firstName="Ana")  # Lightspeed sends the customer again
    again = cli("sync", "--json")  # the look-back re-reads the sale
    assert again.code == 0, again.stderr
    after_sync = _transactions(salesforce)[f"182255-{sale}"]["Match_Status__c"]
    backfill = cli("backfill", "--from", (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(), "--json")
    assert backfill.code == 0, backfill.stderr

    written = _transactions(salesforce)[f"182255-{sale}"]
    assert (written["Match_Status__c"], written["Account__c"] is not None) == ("Created", True), \
        f"after the look-back sync: {after_sync}; after a backfill: {written['Match_Status__c']}, " \
        f"Account__c {written['Account__c']} (sync wrote {again.json['sales']['written']}, " \
        f"backfill wrote {backfill.json['sales']['written']})"


def test_on_the_timestamp_reading_a_sale_edited_after_a_backfill_window_is_still_written_once(
        cli, lightspeed, salesforce, boutique):
    """Where Lightspeed refuses the updatetime filter and sort (the last reading, `timeStamp`, client.py:62), a
    backfill up to LSPOS_SYNC_START and the syncs from it must still write every sale once; docs/sync-rules.md
    allows only "edits after completion may then be missed".

    A sale completed before the start and edited after it: the backfill's server filter (timeStamp, pinned at the
    completion) returns it, but the client-side window check (reading.py:238-240) compares the sale's *update* time
    with the window and drops it; the sync's window, on timeStamp too, never holds its completion time. Both exit 0
    and the sale is never written."""
    now = datetime.now(timezone.utc)
    start = now - timedelta(hours=1)  # LSPOS_SYNC_START; the history before it goes by backfill
    sale = sell(lightspeed, boutique, lines=((1, "10.00"),), at=start - timedelta(hours=2))
    line = int(lightspeed.sale(sale)["SaleLines"]["SaleLine"]["saleLineID"])
    lightspeed.set_line_quantity(line, 3, at=start + timedelta(minutes=10))  # edited after the start

    def refuse_updatetime() -> None:  # readings 1-3 refused on their first page (each asks for the relations)
        lightspeed.fail_next(3, status=400, path_suffix="Sale.json", only_with="load_relations",
                             message="Unsupported sort or filter: updatetime")

    refuse_updatetime()
    backfill = cli("backfill", "--from", (start - timedelta(days=1)).isoformat(), "--to", start.isoformat(),
                   "--no-bulk", "--json")
    refuse_updatetime()
    sync = cli("sync", "--json", env={"LSPOS_SYNC_START": start.isoformat()})

    assert backfill.code == 0 and sync.code == 0, (backfill.stderr, sync.stderr)
    assert "timeStamp" in backfill.stderr  # on the last reading
    assert f"182255-{sale}" in _transactions(salesforce), \
        f"never written: backfill read {backfill.json['sales']['read']}, wrote {backfill.json['sales']['written']}; " \
        f"sync read {sync.json['sales']['read']}"
