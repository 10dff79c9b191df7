"""The mapping file (issue 6.1): renamed objects and fields, switched-off fields, added fields, checked
against the org's describe; the real program against both emulators, and the translation rules alone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import json

import pytest

from conftest import by_key, sell
from lspos_sync import fieldmap
from lspos_sync.emulators.salesforce import Field
from lspos_sync.errors import ConfigError

ENRICH = {"LSPOS_ENRICH_PROFILES": "true"}

MAPPING = """
[objects]
Sales_Transaction__c = "POS_Sale__c"
Sales_Line_Item__c = "POS_Sale_Line__c"

[fields.Account]
LS_First_Name__c = { from = "customer.firstName", type = "text" }

[fields.Sales_Transaction__c]
LS_Sale_ID__c = "POS_Sale_ID__c"
Total__c = "Gross__c"
Payment_Methods__c = false
Register_ID__c = { from = "sale.registerID", type = "text" }
Paid_With__c = { from = "payment.PaymentType.name", type = "text" }
Completed_At__c = { from = "sale.completeTime", type = "datetime" }
Is_Completed__c = { from = "sale.completed", type = "boolean" }

[fields.Sales_Line_Item__c]
Sales_Transaction__c = "POS_Sale__c"
Line_Total__c = "Amount__c"
Gross_Before_Discount__c = { from = "line.displayableSubtotal", type = "currency" }
Item_System_SKU__c = { from = "item.systemSku", type = "text" }
"""


def pos_org(salesforce) -> None:
    """An org that deployed the model under its own names, with the added fields."""
    salesforce.copy_object("Sales_Transaction__c", "POS_Sale__c",
                           renames={"LS_Sale_ID__c": "POS_Sale_ID__c", "Total__c": "Gross__c"})
    for field in (Field("Register_ID__c", "text", 40), Field("Paid_With__c", "text", 80),
                  Field("Completed_At__c", "datetime"), Field("Is_Completed__c", "boolean")):
        salesforce.add_field("POS_Sale__c", field)
    salesforce.copy_object("Sales_Line_Item__c", "POS_Sale_Line__c",
                           renames={"Sales_Transaction__c": "POS_Sale__c", "Line_Total__c": "Amount__c"},
                           retarget={"Sales_Transaction__c": "POS_Sale__c"})
    salesforce.add_field("POS_Sale_Line__c", Field("Gross_Before_Discount__c", "currency", 14, 2))
    salesforce.add_field("POS_Sale_Line__c", Field("Item_System_SKU__c", "text", 40))
    salesforce.add_field("Account", Field("LS_First_Name__c", "text", 40))


@pytest.fixture
def mapping_file(tmp_path):
    path = tmp_path / "mapping.toml"
    path.write_text(MAPPING)
    return path


def test_a_mapping_that_renames_both_objects_and_several_fields_still_syncs_end_to_end(
        cli, lightspeed, salesforce, boutique, mapping_file):
    pos_org(salesforce)
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com")
    sale = sell(lightspeed, boutique, ana, lines=((1, "120.00"), (2, "45.50")))

    result = cli("sync", "--mapping", str(mapping_file), "--json")

    assert result.code == 0, result.stderr
    assert salesforce.records("Sales_Transaction__c") == [] and salesforce.records("Sales_Line_Item__c") == []
    [written] = salesforce.records("POS_Sale__c")
    assert written["POS_Sale_ID__c"] == f"182255-{sale}" and written["Gross__c"] == 211.0
    assert written["Payment_Methods__c"] is None  # switched off
    assert (written["Register_ID__c"], written["Paid_With__c"], written["Is_Completed__c"]) == ("1", "Visa", True)
    assert written["Completed_At__c"] == written["Transaction_Date__c"]
    [account] = [a for a in salesforce.records("Account") if a.get("IsPersonAccount")]
    assert written["Account__c"] == account["Id"] and account["LS_First_Name__c"] == "Ana"
    sale_lines = by_key(salesforce.records("POS_Sale_Line__c"), "LS_Sale_Line_ID__c")
    assert len(sale_lines) == 2 and {line["POS_Sale__c"] for line in sale_lines.values()} == {written["Id"]}
    assert sorted(line["Amount__c"] for line in sale_lines.values()) == [91.0, 120.0]
    assert sorted(line["Gross_Before_Discount__c"] for line in sale_lines.values()) == [91.0, 120.0]
    assert all(line["Item_System_SKU__c"].startswith("21") for line in sale_lines.values())
    assert result.json["mapping"]["changes"][0] == "object Sales_Transaction__c -> POS_Sale__c"

    # the next run reads the renamed objects back: nothing to write, and a removed line goes away
    assert cli("sync", "--mapping", str(mapping_file), "--json").json["sales"]["unchanged"] == 1
    line_id = int(sorted(sale_lines)[1].split("-")[1])
    lightspeed.remove_line(sale, line_id)
    assert cli("sync", "--mapping", str(mapping_file)).code == 0
    assert len(salesforce.records("POS_Sale_Line__c")) == 1


def test_lspos_mapping_variable_is_the_same_as_the_option(cli, lightspeed, salesforce, boutique, mapping_file):
    pos_org(salesforce)
    sell(lightspeed, boutique)

    assert cli("sync", env={"LSPOS_MAPPING": str(mapping_file)}).code == 0

    assert len(salesforce.records("POS_Sale__c")) == 1


def test_a_new_mapping_writes_unchanged_sales_again(cli, lightspeed, salesforce, boutique, tmp_path):
    salesforce.add_field("Sales_Transaction__c", Field("Register_ID__c", "text", 40))
    sale = sell(lightspeed, boutique)
    assert cli("sync").code == 0
    mapping = tmp_path / "m.toml"
    mapping.write_text('[fields.Sales_Transaction__c]\nRegister_ID__c = { from = "sale.registerID" }\n')

    again = cli("sync", "--mapping", str(mapping), "--json")

    assert again.json["sales"]["written"] == 1
    [written] = salesforce.records("Sales_Transaction__c")
    assert written["LS_Sale_ID__c"] == f"182255-{sale}" and written["Register_ID__c"] == "1"


def test_a_change_to_a_switched_off_field_alone_costs_no_salesforce_call(cli, lightspeed, salesforce, boutique,
                                                                        tmp_path):
    # A sale unchanged in what it writes is not written again: a field switched off is not written, so a change
    # to its value alone (the shop renamed; no timestamp of the sale moves) leaves nothing to write.
    mapping = tmp_path / "m.toml"
    mapping.write_text("[fields.Sales_Transaction__c]\nShop_Name__c = false\n")
    sell(lightspeed, boutique)
    assert cli("sync", "--mapping", str(mapping)).code == 0
    lightspeed.rename_shop(boutique.shop, "Rue du Faubourg Saint-Honoré")
    calls = salesforce.api_calls

    again = cli("sync", "--mapping", str(mapping), "--json")

    assert again.code == 0, again.stderr
    assert again.json["sales"]["unchanged"] == 1 and again.json["sales"]["written"] == 0
    assert salesforce.api_calls == calls + 1  # the mapping's describe, nothing more


def test_an_added_number_too_large_for_a_float_is_written_empty_not_sent_as_infinity(cli, lightspeed, salesforce,
                                                                                   boutique, tmp_path):
    # "An attribute that is missing, empty or not of the type is written as empty rather than failing the sale"
    # (docs/mapping.md). "1e400" is a finite Decimal but no float: sent as it was, the request body held
    # `Infinity`, which is not JSON (RFC 8259), and Salesforce refuses the whole request.
    salesforce.add_field("Sales_Transaction__c", Field("Tips__c", "number", 16, 2))
    mapping = tmp_path / "m.toml"
    mapping.write_text('[fields.Sales_Transaction__c]\nTips__c = { from = "sale.calcTips", type = "number" }\n')
    sale = sell(lightspeed, boutique)
    lightspeed.corrupt_sale(sale, calcTips="1e400")

    result = cli("sync", "--mapping", str(mapping), "--json")

    assert result.code == 0, result.stdout + result.stderr
    [written] = salesforce.records("Sales_Transaction__c")
    assert written["LS_Sale_ID__c"] == f"182255-{sale}" and written["Tips__c"] is None


def test_without_match_status_every_link_on_a_transaction_is_kept(cli, lightspeed, salesforce, boutique, tmp_path):
    salesforce.remove_field("Sales_Transaction__c", "Match_Status__c")
    mapping = tmp_path / "m.toml"
    mapping.write_text("[fields.Sales_Transaction__c]\nMatch_Status__c = false\n")
    sale = sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="ana@example.com"),
                at=datetime.now(timezone.utc) - timedelta(minutes=10))  # so the change below moves its update time
    assert cli("sync", "--mapping", str(mapping)).code == 0
    [account] = [a["Id"] for a in salesforce.records("Account") if a.get("IsPersonAccount")]
    lightspeed.set_sale_customer(sale, None)

    result = cli("sync", "--mapping", str(mapping), "--json")

    # nothing tells the sync's links from an admin's: the lookup reads no status, and the link stays
    assert result.code == 0, result.stderr
    assert result.json["sales"]["written"] == 1
    [written] = salesforce.records("Sales_Transaction__c")
    assert written["Account__c"] == account and "Match_Status__c" not in written


def test_a_profile_field_switched_off_is_not_needed_in_the_org_for_enrichment(cli, lightspeed, salesforce, boutique,
                                                                             tmp_path):
    salesforce.remove_field("Account", "PersonBirthdate")  # hidden from the integration user (field-level security)
    mapping = tmp_path / "mapping.toml"
    mapping.write_text("[fields.Account]\nPersonBirthdate = false\n")
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com",
                                  dob=datetime(1981, 4, 9, 4, tzinfo=timezone.utc))
    sell(lightspeed, boutique, ana)
    assert cli("mapping", "check", "--mapping", str(mapping), env=ENRICH).code == 0  # says the mapping fits

    result = cli("sync", "--mapping", str(mapping), "--json", env=ENRICH)

    assert result.code == 0, result.stdout  # the customer lookups do not read it
    assert len(salesforce.records("Sales_Transaction__c")) == 1


def test_a_profile_field_switched_off_is_neither_written_nor_reported_as_filled(cli, lightspeed, salesforce, boutique,
                                                                              tmp_path):
    mapping = tmp_path / "mapping.toml"
    mapping.write_text("[fields.Account]\nPersonBirthdate = false\n")
    typed = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                          "LastName": "Lima", "PersonEmail": "ana@example.com"})
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com",
                                  dob=datetime(1981, 4, 9, 4, tzinfo=timezone.utc), address={"city": "Paris"})
    sell(lightspeed, boutique, ana)

    result = cli("sync", "--mapping", str(mapping), "--json", env=ENRICH)

    assert result.code == 0, result.stderr
    assert salesforce.get("Account", typed)["PersonBirthdate"] is None  # not written, as switched off
    [filled] = result.json["enriched"]
    assert filled["fields"] == ["PersonMailingCity"]


def test_an_account_whose_only_blanks_are_switched_off_gets_no_update(cli, lightspeed, salesforce, boutique, tmp_path):
    mapping = tmp_path / "mapping.toml"
    mapping.write_text("[fields.Account]\nPersonBirthdate = false\n")
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com",
                                  dob=datetime(1981, 4, 9, 4, tzinfo=timezone.utc))
    salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id, "LastName": "Lima",
                                  "PersonEmail": "ana@example.com", "LS_Customer_ID__c": f"182255-{ana}"})
    sell(lightspeed, boutique, ana)

    result = cli("sync", "--mapping", str(mapping), "--json", env=ENRICH)

    assert result.code == 0, result.stderr
    assert (result.json["enriched"], result.json["records"].get("update_accounts", 0)) == ([], 0)


def test_mapping_check_lists_every_problem_on_its_own_line_and_exits_2(cli, salesforce, mapping_file):
    salesforce.copy_object("Sales_Transaction__c", "POS_Sale__c", renames={"LS_Sale_ID__c": "POS_Sale_ID__c"})
    salesforce.add_field("POS_Sale__c", Field("Register_ID__c", "number", 18))  # a number, mapped as text
    salesforce.add_field("POS_Sale__c", Field("Paid_With__c", "text", 80, writable=False))
    # no POS_Sale_Line__c at all; POS_Sale__c has no Gross__c, Completed_At__c, Is_Completed__c

    result = cli("mapping", "check", "--mapping", str(mapping_file))

    assert result.code == 2
    problems = [line for line in result.stderr.splitlines() if "mapping:" in line]
    assert any("POS_Sale__c.Gross__c (for Total__c) does not exist" in p for p in problems)
    assert any("POS_Sale__c.Register_ID__c is double" in p for p in problems)
    assert any("POS_Sale__c.Paid_With__c is not createable" in p for p in problems)
    assert any("object POS_Sale_Line__c (for Sales_Line_Item__c) does not exist" in p for p in problems)
    assert any("Account.LS_First_Name__c does not exist" in p for p in problems)
    assert len(problems) == 7, problems


@pytest.mark.parametrize("sobject, key", [("Sales_Transaction__c", "LS_Sale_ID__c"), ("Account", "LS_Customer_ID__c"),
                                         ("Sales_Line_Item__c", "LS_Sale_Line_ID__c")])
def test_mapping_check_refuses_a_key_that_is_an_external_id_but_not_unique(cli, salesforce, sobject, key):
    salesforce.remove_field(sobject, key)  # as an admin may create it: External ID, Unique left unticked
    salesforce.add_field(sobject, Field(key, "text", 40, external_id=True, unique=False))

    result = cli("mapping", "check")

    assert result.code == 2
    assert [line for line in result.stderr.splitlines() if "mapping:" in line] == [
        f"Error: mapping: field {sobject}.{key} is an External ID but not Unique; lspos-sync upserts on it, and two "
        "upserts of one new key would make two records"]


def test_a_run_with_a_mapping_the_org_does_not_fit_exits_2_before_any_write(
        cli, lightspeed, salesforce, boutique, mapping_file):
    sell(lightspeed, boutique)
    calls = salesforce.api_calls

    result = cli("sync", "--mapping", str(mapping_file), "--json")

    assert result.code == 2 and result.json["outcome"] == "failed"
    assert "does not exist in Salesforce" in result.json["error"]
    assert salesforce.api_calls == calls + 1  # the describe, in one /composite
    assert salesforce.records("Sales_Transaction__c") == [] and salesforce.records("Account") == []
    assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] is None


def test_mapping_check_passes_on_an_org_that_fits(cli, salesforce, mapping_file):
    pos_org(salesforce)

    result = cli("mapping", "check", "--mapping", str(mapping_file), "--json")

    assert result.code == 0, result.stderr
    assert result.json["ok"] is True and result.json["salesforce_api_calls"] == 1
    assert result.json["objects"] == {"Account": "Account", "Sales_Transaction__c": "POS_Sale__c",
                                      "Sales_Line_Item__c": "POS_Sale_Line__c"}


def test_a_server_that_does_not_describe_inside_composite_is_asked_object_by_object(cli, salesforce, mapping_file):
    pos_org(salesforce)
    salesforce.describe_in_composite = False

    result = cli("mapping", "check", "--mapping", str(mapping_file), "--json")

    assert result.code == 0, result.stderr
    assert result.json["salesforce_api_calls"] == 4  # the composite, then three describes


def test_mapping_show_prints_the_effective_mapping_without_credentials(tmp_path, mapping_file):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "lspos_sync", "mapping", "show", "--json", "--mapping",
                           str(mapping_file)], capture_output=True, text=True, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin"})

    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["objects"]
    assert shown["Sales_Transaction__c"]["object"] == "POS_Sale__c"
    assert shown["Sales_Transaction__c"]["fields"]["Total__c"] == "Gross__c"
    assert shown["Sales_Transaction__c"]["fields"]["Payment_Methods__c"] is None
    assert shown["Sales_Transaction__c"]["added"]["Register_ID__c"] == {"from": "sale.registerID", "type": "text"}
    assert shown["Sales_Line_Item__c"]["fields"]["Sales_Transaction__c"] == "POS_Sale__c"


def test_dry_run_shows_the_mapped_names_and_the_added_values(cli, lightspeed, salesforce, boutique, mapping_file):
    pos_org(salesforce)
    sale = sell(lightspeed, boutique)

    plain = cli("dry-run", "--mapping", str(mapping_file))
    data = cli("dry-run", "--mapping", str(mapping_file), "--json").json

    assert plain.code == 0, plain.stderr
    assert "mapping: object Sales_Line_Item__c -> POS_Sale_Line__c" in plain.stderr
    assert "mapping: field Sales_Transaction__c.Total__c -> POS_Sale__c.Gross__c" in plain.stderr
    assert "adds Register_ID__c='1'" in plain.stdout
    [plan] = data["plans"]
    assert plan["sale_id"] == sale and plan["added"]["Paid_With__c"] == "Visa"
    assert salesforce.records("POS_Sale__c") == []


@pytest.mark.parametrize("text, problem", [
    ('[objects]\nAccount = "Client__c"', "Account: Person Accounts are always Account"),
    ("[fields.Sales_Transaction__c]\nLS_Sale_ID__c = false", "LS_Sale_ID__c: cannot be switched off"),
    ("[fields.Sales_Line_Item__c]\nSales_Transaction__c = false", "Sales_Transaction__c: cannot be switched off"),
    ('[fields.Sales_Transaction__c]\nX__c = { from = "register.name" }', "unknown source 'register'"),
    ('[fields.Sales_Transaction__c]\nX__c = { from = "line.avgCost" }', "line.* is not available"),
    ('[fields.Sales_Transaction__c]\nX__c = { from = "sale.x", type = "money" }', "unknown type 'money'"),
    ('[fields.Sales_Transaction__c]\nX__c = "Y__c"', "not a field lspos-sync writes"),
    ("[fields.Sales_Transaction__c]\nTotal__c = 3", "rename it with a field API name"),
    ('[fields.Sales_Transaction__c]\nTotal__c = "Tax__c"', "Tax__c is the target of more than one field"),
    ("[fields.Invoice__c]\nX__c = false", "[fields.Invoice__c]: unknown object"),
    ("[colours]\nred = 1", "unknown table [colours]"),
    ("[objects\n", "is not valid TOML"),
])
def test_a_bad_mapping_file_is_refused_with_a_line_naming_the_problem(tmp_path, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)

    with pytest.raises(ConfigError) as refused:
        fieldmap.load(path)

    assert problem in str(refused.value)


def test_a_bad_mapping_file_exits_2_before_anything_is_read(cli, lightspeed, salesforce, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[objects]\nAccount = "X__c"\n[fields.Sales_Transaction__c]\nLS_Sale_ID__c = false\n')

    result = cli("sync", "--mapping", str(path))

    assert result.code == 2
    assert result.stderr.count("mapping:") == 2
    assert lightspeed.request_count() == 0 and salesforce.api_calls == 0


def test_a_bad_mapping_file_stops_every_command_with_exit_2(cli, tmp_path):
    """docs/mapping.md: problems in the file itself "stop every command at start with exit 2"."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[objects]\nAccount = "Client__c"\n')

    for command in (("checkpoint", "show"), ("status",), ("rejects", "list")):
        result = cli(*command, "--mapping", str(bad))
        assert result.code == 2, (command, result.code, result.stdout)
        assert result.stderr == "Error: mapping: [objects] Account: Person Accounts are always Account; it cannot be " \
                                "renamed\n"


def test_soql_is_renamed_outside_string_literals_only():
    names = fieldmap.FieldMap(objects={"Sales_Transaction__c": "POS_Sale__c"},
                              renames={("Sales_Transaction__c", "Total__c"): "Gross__c"})

    statement, sobject = names.soql("SELECT Id, Total__c FROM Sales_Transaction__c WHERE Ticket_Number__c = "
                                    "'Total__c' AND Total__c > 0")

    assert sobject == "Sales_Transaction__c"
    assert statement == ("SELECT Id, Gross__c FROM POS_Sale__c WHERE Ticket_Number__c = 'Total__c' "
                         "AND Gross__c > 0")
    assert names.incoming("Sales_Transaction__c", {"Id": "a", "Gross__c": 1.0}) == {"Id": "a", "Total__c": 1.0}


def test_outgoing_records_rename_relationship_references_and_drop_switched_off_fields():
    names = fieldmap.FieldMap(objects={"Sales_Transaction__c": "POS_Sale__c"},
                              renames={("Sales_Transaction__c", "LS_Sale_ID__c"): "POS_Sale_ID__c",
                                       ("Sales_Line_Item__c", "Sales_Transaction__c"): "POS_Sale__c"},
                              off=frozenset({("Sales_Line_Item__c", "Category__c")}))

    line = names.outgoing("Sales_Line_Item__c", {
        "attributes": {"type": "Sales_Line_Item__c"}, "LS_Sale_Line_ID__c": "1-2",
        "Sales_Transaction__r": {"LS_Sale_ID__c": "1-1"}, "Category__c": "Silk", "Quantity__c": 1.0})

    assert line == {"attributes": {"type": "Sales_Line_Item__c"}, "LS_Sale_Line_ID__c": "1-2",
                    "POS_Sale__r": {"POS_Sale_ID__c": "1-1"}, "Quantity__c": 1.0}


def test_an_added_field_from_a_foreign_key_lightspeed_sends_as_0_is_written_empty():
    # "No foreign key" is "0", not null (fact sheet §4.3): the models read it as no key, and so must an added field.
    names = fieldmap.FieldMap(additions={"Sales_Transaction__c": (
        fieldmap.Addition("Quote_ID__c", "sale.quoteID", "text"), fieldmap.Addition("Quote__c", "sale.quoteID", "number"),
        fieldmap.Addition("Register_ID__c", "sale.registerID", "text"),
        fieldmap.Addition("Change__c", "sale.change", "number"))})

    added = names.added_values("Sales_Transaction__c",
                               {"sale": {"quoteID": "0", "registerID": "1", "change": "0"}})

    assert added == {"Quote_ID__c": None, "Quote__c": None, "Register_ID__c": "1", "Change__c": 0.0}


def test_match_reasons_name_the_org_fields():
    names = fieldmap.FieldMap(renames={("Account", "PersonEmail"): "Client_Email__c",
                                       ("Account", "LS_Customer_ID__c"): "POS_Client_ID__c"})

    assert names.in_org_names("2 accounts have PersonEmail ana@example.com") == \
        "2 accounts have Client_Email__c ana@example.com"
    assert names.in_org_names("LS_Customer_ID__c = 182255-7") == "POS_Client_ID__c = 182255-7"
