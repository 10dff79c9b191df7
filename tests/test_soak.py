"""Cron under faults for a few simulated hours: the short form of `bench/soak.py` (issue 11, part 4).

The harness runs the installed program in a fresh process every ten simulated minutes, the shops trading between
runs and a fault in most of them, and compares Salesforce with Lightspeed from the emulators' stores after every
run that exits 0. Its docstring says what it does; docs/failure-modes.md ("Soak") what a long run found.
"""

from __future__ import annotations

import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from soak import FAULTS, Soak, compare, compare_features  # noqa: E402 - bench/ is not a package

SEED = 2
RUNS = 24  # four simulated hours: an hour of Salesforce outage, then every other fault at least once


def test_four_hours_of_cron_under_faults_leave_salesforce_equal_to_lightspeed(tmp_path):
    with Soak(tmp_path, SEED, RUNS) as soak:
        soak.seed_shops()
        figures = soak.run()

    assert figures.mismatches == []
    assert [(run.index, run.fault, run.exit_code, run.stderr_tail[-300:]) for run in figures.bad_exits] == []
    assert figures.final_problems == []  # no duplicate, no parked sale, one clock, a small lag
    scheduled = {run.fault for run in figures.runs}
    assert {*FAULTS, "salesforce_outage", None} <= scheduled
    # every fault showed in the emulators (a kill may come after a quick run has finished)
    assert {*FAULTS, "salesforce_outage"} - {"kill"} <= {run.fault for run in figures.runs if run.bit}
    assert {run.exit_code for run in figures.runs if run.fault == "salesforce_outage"} == {1}
    assert sum(run.checked for run in figures.runs) >= RUNS // 2
    assert {"sold", "opened", "voided", "edited", "completed", "refunded"} <= set(figures.events)


def test_the_soak_comparison_sees_a_wrong_amount_a_wrong_quantity_and_a_missing_sale(tmp_path):
    with Soak(tmp_path, SEED, 4) as soak:
        soak.seed_shops()
        soak.schedule = lambda: [None] * 4
        figures = soak.run()
        assert figures.final_problems == [] and figures.mismatches == []
        sf, ls = soak.salesforce, soak.lightspeed
        sale = sf.records("Sales_Transaction__c")[0]
        line = sf.records("Sales_Line_Item__c")[0]
        # as a faulty writer would leave them, through the REST API
        rows = f"{sf.instance_url}/services/data/v{sf.api_version}/sobjects"
        for path, change in ((f"Sales_Transaction__c/{sale['Id']}", {"Total__c": sale["Total__c"] + 0.01}),
                             (f"Sales_Line_Item__c/{line['Id']}", {"Quantity__c": line["Quantity__c"] + 1})):
            answer = requests.patch(f"{rows}/{path}", json=change, verify=str(sf.ca_bundle),
                                    headers={"Authorization": f"Bearer {sf.access_token}"})
            assert answer.status_code == 204, answer.text
        shop, item = next(iter(soak.catalogue.shops)), next(iter(soak.catalogue.items))
        unsynced = ls.add_sale(shop, [{"item_id": item, "quantity": 1, "unit_price": "3"}])

        problems = compare(ls, sf, soak.catalogue)

    assert any(p.startswith(f"transaction {sale['LS_Sale_ID__c']} Total__c") for p in problems)
    assert any(p.startswith(f"line {line['LS_Sale_Line_ID__c']} Quantity__c") for p in problems)
    assert f"transaction 182255-{unsynced} is missing" in problems
    assert len(problems) == 4  # and the new sale's line


FEATURES = frozenset({"rollups", "customers", "enrich"})


def test_eighty_minutes_under_faults_with_the_optional_features_keep_rollups_clients_and_profiles_exact(tmp_path):
    with Soak(tmp_path, SEED, 8, features=FEATURES) as soak:  # too short for an outage: bench/soak.py has them
        soak.seed_shops()
        figures = soak.run()

    assert figures.mismatches == []
    assert [(run.index, run.fault, run.exit_code, run.stderr_tail[-300:]) for run in figures.bad_exits] == []
    assert figures.final_problems == []
    assert figures.events["customer_created"] and sum(run.checked for run in figures.runs) >= 4


def test_the_feature_checks_see_a_wrong_rollup_an_overwritten_typed_value_and_a_client_without_an_account(tmp_path):
    with Soak(tmp_path, SEED, 4, features=FEATURES) as soak:
        soak.seed_shops()
        soak.schedule = lambda: [None] * 4
        figures = soak.run()
        assert figures.final_problems == [] and figures.mismatches == []
        sf, ls, catalogue = soak.salesforce, soak.lightspeed, soak.catalogue
        buyer = next(a for a in sf.records("Account") if a.get("Purchase_Count__c"))
        typed_id, typed = next((i, t) for i, t in catalogue.typed.items() if "PersonMailingCity" in t)
        rows = f"{sf.instance_url}/services/data/v{sf.api_version}/sobjects"
        for record_id, change in ((buyer["Id"], {"Purchase_Count__c": buyer["Purchase_Count__c"] + 1}),
                                  (typed_id, {"PersonMailingCity": "Overwritten"})):
            answer = requests.patch(f"{rows}/Account/{record_id}", json=change, verify=str(sf.ca_bundle),
                                    headers={"Authorization": f"Bearer {sf.access_token}"})
            assert answer.status_code == 204, answer.text
        newcomer = soak._new_customer("Late", "Comer", "late@example.com", crm=False)  # not synced

        problems = compare_features(ls, sf, catalogue, FEATURES)

    assert any(p.startswith(f"roll-ups of {buyer['LS_Customer_ID__c']}") for p in problems)
    assert any(p.startswith("PersonMailingCity of") and "'Overwritten'" in p for p in problems)
    assert f"customer 182255-{newcomer} has no Person Account" in problems
    assert len(problems) == 3
