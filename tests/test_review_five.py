"""Review five: contract §5 (mapping, profile enrichment, roll-ups, several accounts, clients without a sale) and
how it meets §3/§4. Each test names a promised behaviour the product does not keep; the real program against
both emulators."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from conftest import by_key, sell

FEED = {"LSPOS_SYNC_CUSTOMERS": "true"}


# -- LSPOS_MAPPING: "false switches it off: it is not written, and its value is left as it is" (docs/mapping.md)

def test_a_bad_mapping_file_stops_every_command_with_exit_2(cli, tmp_path):
    """docs/mapping.md: problems in the file itself "stop every command at start with exit 2"."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[objects]\nAccount = "Client__c"\n')

    for command in (("checkpoint", "show"), ("status",), ("rejects", "list")):
        result = cli(*command, "--mapping", str(bad))
        assert result.code == 2, (command, result.code, result.stdout)


# -- dry-run with LSPOS_SYNC_CUSTOMERS: "the real pipeline with every write switched off ... per sale what would
#    happen (match and why ...)" (contract §1); "A later sale of such a client links by key (Linked)" (§5)

def test_dry_run_with_the_customer_feed_previews_a_new_clients_sale_as_the_sync_writes_it(cli, lightspeed, salesforce,
                                                                                          boutique):
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    sale = sell(lightspeed, boutique, ana)

    preview = cli("dry-run", "--json", env=FEED)
    written = cli("sync", "--json", env=FEED)

    assert preview.code == written.code == 0
    match = by_key(salesforce.records("Sales_Transaction__c"), "LS_Sale_ID__c")[f"182255-{sale}"]["Match_Status__c"]
    assert match == "Linked"
    assert written.json["records"]["create_accounts"] == 1
    [plan] = preview.json["plans"]
    # observed: the preview says "Created" and counts two account creations for the one client
    assert (plan["match"], preview.json["records"]["create_accounts"]) == (match, 1)


def test_dry_run_previews_a_voided_sale_once(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique, at=datetime.now(timezone.utc) - timedelta(minutes=5))
    assert cli("sync").code == 0
    lightspeed.void_sale(sale)

    preview = cli("dry-run", "--json")

    assert preview.code == 0, preview.stderr
    # observed: two plans for sale 1 (SaleVoid feed, then the page) and "2 would write" for one sale
    assert [p["sale_id"] for p in preview.json["plans"]] == [sale]
    assert preview.json["sales"]["written"] == 1
