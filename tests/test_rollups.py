"""Loyalty roll-ups (issue 6.3, LSPOS_ROLLUPS=true): four Account fields kept exact after every run for the
accounts the run touched, from SOQL aggregates; the real program against both emulators."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from conftest import sell
from lspos_sync import rollups

ROLLUPS = {"LSPOS_ROLLUPS": "true"}


def account_of(salesforce, email: str) -> dict:
    return next(a for a in salesforce.records("Account") if (a.get("PersonEmail") or "").lower() == email)


def salesforce_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def test_rollups_sum_completed_and_refunds_count_completed_and_keep_first_and_last_dates(
        cli, lightspeed, salesforce, boutique):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    first = sell(lightspeed, boutique, ana, lines=((1, "120.00"),), at=now - timedelta(hours=5))
    second = sell(lightspeed, boutique, ana, lines=((2, "45.50"),), at=now - timedelta(hours=3))
    lightspeed.refund_sale(first, at=now - timedelta(hours=2))
    sell(lightspeed, boutique, ana, completed=False)  # open: not a purchase yet

    result = cli("sync", "--json", env=ROLLUPS)

    assert result.code == 0, result.stderr
    assert result.json["rollups"]["accounts"] == 1 and result.json["rollups"]["updated"] == 1
    account = account_of(salesforce, "ana@example.com")
    assert account["Lifetime_Spend__c"] == 91.0  # 120 + 91 - 120
    assert account["Purchase_Count__c"] == 2  # the refund is not a purchase
    assert account["First_Purchase_Date__c"] == salesforce_time(now - timedelta(hours=5))
    assert account["Last_Purchase_Date__c"] == salesforce_time(now - timedelta(hours=3))

    lightspeed.void_sale(second)  # a void changes them too
    assert cli("sync", env=ROLLUPS).code == 0

    account = account_of(salesforce, "ana@example.com")
    assert (account["Lifetime_Spend__c"], account["Purchase_Count__c"]) == (0.0, 1)
    assert account["Last_Purchase_Date__c"] == salesforce_time(now - timedelta(hours=5))


def test_rollups_are_recomputed_only_for_the_accounts_the_run_touched(cli, lightspeed, salesforce, boutique):
    untouched = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                              "LastName": "Other", "PersonEmail": "other@example.com",
                                              "Lifetime_Spend__c": 5.0, "Purchase_Count__c": 9})
    bea = lightspeed.add_customer("Bea", "Roy", email="bea@example.com")
    sell(lightspeed, boutique, bea)
    assert cli("sync", env=ROLLUPS).code == 0

    nothing_new = cli("sync", "--json", env=ROLLUPS)

    other = salesforce.get("Account", untouched)
    assert (other["Lifetime_Spend__c"], other["Purchase_Count__c"]) == (5.0, 9)
    assert nothing_new.json["rollups"] == {"accounts": 0, "updated": 0, "changes": [], "rejected": []}
    assert nothing_new.json["salesforce_api_calls"] == 0
    assert account_of(salesforce, "bea@example.com")["Purchase_Count__c"] == 1


def test_rollups_follow_a_sale_to_the_account_it_now_belongs_to(cli, lightspeed, salesforce, boutique):
    crm = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                        "LastName": "Lima", "PersonEmail": "ana@example.com"})
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    sale = sell(lightspeed, boutique, ana)
    assert cli("sync", env=ROLLUPS).code == 0
    assert salesforce.get("Account", crm)["Purchase_Count__c"] == 1
    [transaction] = salesforce.records("Sales_Transaction__c")

    # the sale moves to a guest in Lightspeed: the account it left is recomputed
    lightspeed.corrupt_sale(sale, customerID="0")
    lightspeed.void_sale(sale)
    assert cli("sync", env=ROLLUPS).code == 0

    assert salesforce.get("Sales_Transaction__c", transaction["Id"])["Status__c"] == "Voided"
    account = salesforce.get("Account", crm)
    assert (account["Purchase_Count__c"], account["Lifetime_Spend__c"], account["Last_Purchase_Date__c"]) == \
        (0, 0.0, None)


def test_rollups_no_longer_count_a_sale_for_the_account_the_sync_unlinked_it_from(cli, lightspeed, salesforce,
                                                                                  boutique):
    crm = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                        "LastName": "Lima", "PersonEmail": "ana@example.com"})
    sale = sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="ana@example.com"),
                at=datetime.now(timezone.utc) - timedelta(minutes=10))  # so the change below moves its update time
    assert cli("sync", env=ROLLUPS).code == 0
    assert salesforce.get("Account", crm)["Purchase_Count__c"] == 1
    lightspeed.set_sale_customer(sale, None)  # rung up to the wrong customer: taken off at the till

    preview = cli("dry-run", "--json", env=ROLLUPS).json
    result = cli("sync", "--json", env=ROLLUPS)

    [plan] = preview["plans"]
    assert (plan["match"], plan["account_id"]) == ("Guest", None)
    [change] = preview["rollups"]["changes"]
    assert change["account_id"] == crm and change["fields"]["Purchase_Count__c"] == {"from": 1, "to": 0}
    assert result.code == 0, result.stderr
    [transaction] = salesforce.records("Sales_Transaction__c")
    assert (transaction["Match_Status__c"], transaction["Account__c"]) == ("Guest", None)
    account = salesforce.get("Account", crm)
    assert (account["Purchase_Count__c"], account["Lifetime_Spend__c"], account["Last_Purchase_Date__c"]) == \
        (0, 0.0, None)


def test_dry_run_shows_the_rollups_it_would_change_and_writes_none(cli, lightspeed, salesforce, boutique):
    crm = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                        "LastName": "Lima", "PersonEmail": "ana@example.com"})
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    zoe = lightspeed.add_customer("Zoé", "Faure", email="zoe@example.com")
    sell(lightspeed, boutique, ana, lines=((1, "120.00"),))
    sell(lightspeed, boutique, zoe, lines=((1, "80.00"),))

    plain = cli("dry-run", env=ROLLUPS)
    data = cli("dry-run", "--json", env=ROLLUPS).json

    assert plain.code == 0, plain.stderr
    changes = {change["account_id"] or change["customer_key"]: change["fields"] for change in data["rollups"]["changes"]}
    assert changes[crm]["Lifetime_Spend__c"] == {"from": None, "to": 120.0}
    assert changes[f"182255-{zoe}"]["Purchase_Count__c"] == {"from": None, "to": 1}
    assert f"roll-ups of account {crm} would change: Lifetime_Spend__c None -> 120.0" in plain.stderr
    assert "roll-ups would change on 2 of 2 account(s)" in plain.stdout
    assert salesforce.get("Account", crm)["Lifetime_Spend__c"] is None
    assert salesforce.records("Sales_Transaction__c") == []


def test_dry_run_with_the_customer_feed_shows_the_rollups_of_the_accounts_the_feed_would_key_or_create(
        cli, lightspeed, salesforce, boutique):
    crm = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                        "LastName": "Lima", "PersonEmail": "ana@example.com"})
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")  # the feed would key the CRM's account
    zoe = lightspeed.add_customer("Zoé", "Faure", email="zoe@example.com")  # the feed would create one
    sell(lightspeed, boutique, ana, lines=((1, "120.00"),))
    sell(lightspeed, boutique, zoe, lines=((1, "80.00"),))

    data = cli("dry-run", "--json", env={**ROLLUPS, "LSPOS_SYNC_CUSTOMERS": "true"}).json

    assert [plan["match"] for plan in data["plans"]] == ["Linked", "Linked"]  # by key, as the sync writes them
    changes = {change["account_id"] or change["customer_key"]: change["fields"] for change in data["rollups"]["changes"]}
    assert changes[crm]["Lifetime_Spend__c"] == {"from": None, "to": 120.0}
    assert changes[f"182255-{zoe}"]["Lifetime_Spend__c"] == {"from": None, "to": 80.0}


def test_dry_run_rollups_replace_what_salesforce_holds_for_sales_it_would_rewrite(cli, lightspeed, salesforce, boutique):
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    sale = sell(lightspeed, boutique, ana, lines=((1, "120.00"),))
    assert cli("sync", env=ROLLUPS).code == 0
    lightspeed.void_sale(sale)

    data = cli("dry-run", "--json", env=ROLLUPS).json

    [change] = data["rollups"]["changes"]
    assert change["fields"]["Lifetime_Spend__c"] == {"from": 120.0, "to": 0.0}
    assert change["fields"]["Purchase_Count__c"] == {"from": 1, "to": 0}


def test_a_rejected_rollup_exits_3_and_is_retried_by_the_next_run(cli, lightspeed, salesforce, boutique):
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    sell(lightspeed, boutique, ana, lines=((1, "120.00"),))
    salesforce.add_validation_rule("Account", lambda r: (r.get("Lifetime_Spend__c") or 0) > 100,
                                   "Spend over 100 needs approval")

    refused = cli("sync", "--json", env=ROLLUPS)

    assert refused.code == 3 and refused.json["outcome"] == "rejected"
    assert "Spend over 100" in refused.json["rollups"]["rejected"][0]["reason"]
    assert refused.json["sales"]["written"] == 1 and refused.json["checkpoint"]
    salesforce.clear_validation_rules()

    retried = cli("sync", "--json", env=ROLLUPS)

    assert retried.code == 0 and retried.json["rollups"]["updated"] == 1
    assert account_of(salesforce, "ana@example.com")["Lifetime_Spend__c"] == 120.0


def test_without_rollups_the_fields_are_left_alone(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="ana@example.com"))

    result = cli("sync", "--json")

    assert result.json["rollups"] is None
    assert account_of(salesforce, "ana@example.com")["Lifetime_Spend__c"] is None


def test_rollups_need_the_fields_they_aggregate(cli, tmp_path):
    mapping = tmp_path / "m.toml"
    mapping.write_text("[fields.Sales_Transaction__c]\nTotal__c = false\n")

    result = cli("sync", "--mapping", str(mapping), env=ROLLUPS)

    assert result.code == 2 and "LSPOS_ROLLUPS needs Sales_Transaction__c.Total__c" in result.stderr


def test_aggregate_statements_stay_under_the_group_limit():
    ids = [f"001{i:015d}" for i in range(2500)]

    statements = rollups.aggregate_statements(ids)

    assert len(statements) == 3  # 1,000 accounts (at most 2,000 groups) each
    accounts = [aggregate.count("'001") for aggregate, _ in statements]
    assert max(accounts) <= 1000 and sum(accounts) == 2500
    assert all("GROUP BY Account__c, Status__c" in aggregate for aggregate, _ in statements)


def test_accounts_a_failed_run_touched_are_rolled_up_by_the_next_run(cli, lightspeed, salesforce, boutique):
    from lspos_sync.emulators.salesforce import Field

    salesforce.remove_field("Account", "Lifetime_Spend__c")  # not deployed yet
    sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="ana@example.com"), lines=((1, "50.00"),))

    failed = cli("sync", "--json", env=ROLLUPS)

    assert failed.code == 1 and "Lifetime_Spend__c" in failed.json["error"]
    assert len(salesforce.records("Sales_Transaction__c")) == 1  # the sale itself went through
    salesforce.add_field("Account", Field("Lifetime_Spend__c", "currency", 14, 2))

    fixed = cli("sync", "--json", env=ROLLUPS)

    assert fixed.code == 0 and fixed.json["sales"]["written"] == 0  # nothing new: the store remembered
    account = account_of(salesforce, "ana@example.com")
    assert (account["Lifetime_Spend__c"], account["Purchase_Count__c"]) == (50.0, 1)


def test_a_rollup_field_switched_off_is_left_alone_and_the_others_are_kept_exact(cli, lightspeed, salesforce, boutique,
                                                                               tmp_path):
    salesforce.remove_field("Account", "Lifetime_Spend__c")  # the org keeps no spend
    mapping = tmp_path / "mapping.toml"
    mapping.write_text("[fields.Account]\nLifetime_Spend__c = false\n")
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    sell(lightspeed, boutique, ana, at=datetime.now(timezone.utc) - timedelta(minutes=10))
    assert cli("mapping", "check", "--mapping", str(mapping), env=ROLLUPS).code == 0  # says the mapping fits

    result = cli("sync", "--mapping", str(mapping), "--json", env=ROLLUPS)

    assert result.code == 0, result.stdout  # neither read nor written
    account = account_of(salesforce, "ana@example.com")
    assert (account["Purchase_Count__c"], "Lifetime_Spend__c" in account) == (1, False)
    sell(lightspeed, boutique, ana, lines=((1, "80.00"),))
    preview = cli("dry-run", "--mapping", str(mapping), "--json", env=ROLLUPS)
    [change] = preview.json["rollups"]["changes"]
    assert set(change["fields"]) == {"Purchase_Count__c", "Last_Purchase_Date__c"}  # no spend that would move


def test_a_sale_moved_to_another_client_by_a_run_that_failed_after_writing_it_is_taken_off_its_old_accounts_rollups(
        cli, lightspeed, salesforce, boutique):
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    bea = lightspeed.add_customer("Bea", "Roy", email="bea@example.com")
    sale = sell(lightspeed, boutique, ana, lines=((1, "80.00"),),
                at=datetime.now(timezone.utc) - timedelta(minutes=10))  # so the change below moves its update time
    assert cli("sync", env=ROLLUPS).code == 0
    assert account_of(salesforce, "ana@example.com")["Purchase_Count__c"] == 1
    lightspeed.set_sale_customer(sale, bea)  # rung up to the wrong client: moved to the right one at the till
    # Salesforce commits the transaction's move to Bea, but no response reaches the run: it fails after the write
    salesforce.drop_next(50, path_contains="/composite", after_commit=True, body_contains="Sales_Transaction__c/")

    failed = cli("sync", env=ROLLUPS)

    assert failed.code == 1, failed.stderr
    [transaction] = salesforce.records("Sales_Transaction__c")
    assert transaction["Account__c"] == account_of(salesforce, "bea@example.com")["Id"]  # the move went through
    salesforce.clear_faults()

    assert cli("sync", env=ROLLUPS).code == 0

    assert account_of(salesforce, "bea@example.com")["Purchase_Count__c"] == 1
    account = account_of(salesforce, "ana@example.com")  # the sale she no longer has counts no more
    assert (account["Purchase_Count__c"], account["Lifetime_Spend__c"], account["Last_Purchase_Date__c"]) == \
        (0, 0.0, None)
