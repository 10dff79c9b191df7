"""`lspos-sync reconcile` end to end against both emulators, and the aggregate SOQL the emulator answers for it."""

from __future__ import annotations

import ssl
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from conftest import sell

API = "/services/data/v62.0"
ACCOUNT = "182255"
TODAY = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
DAY1 = TODAY - timedelta(days=3)  # two past UTC days the sales happen on
DAY2 = TODAY - timedelta(days=2)


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def _reconcile(cli, since: datetime = DAY1, until: datetime = TODAY, *extra: str):
    return cli("reconcile", "--from", since.isoformat(), "--to", until.isoformat(), *extra)


def _synced(cli) -> None:
    result = cli("backfill", "--from", (DAY1 - timedelta(days=1)).isoformat())
    assert result.code == 0, result.stderr


@pytest.fixture
def week(lightspeed, boutique):
    """Sales on two UTC days in two shops: 23:30 UTC is already the next day in Paris, still DAY2 here."""
    marais = lightspeed.add_shop("Le Marais", "Europe/Paris")
    return {
        "a": sell(lightspeed, boutique, at=DAY1 + timedelta(hours=10)),
        "b": sell(lightspeed, boutique, lines=((2, "45.50"),), at=DAY1 + timedelta(hours=15)),
        "c": sell(lightspeed, boutique, at=DAY2 + timedelta(hours=23, minutes=30)),
        "d": lightspeed.add_sale(marais, [{"item_id": boutique.bag, "quantity": 1, "unit_price": "300.00"}],
                                 at=DAY2 + timedelta(hours=9)),
    }


# ---- the command ---------------------------------------------------------------------------------------------


def test_systems_that_agree_exit_0_with_one_line_and_few_salesforce_calls(cli, salesforce, week):
    _synced(cli)
    calls = salesforce.api_calls

    result = _reconcile(cli)

    assert result.code == 0, result.stderr
    assert result.stdout.count("\n") == 1 and "Lightspeed 4 sale(s) 631.00, Salesforce 4 sale(s) 631.00" in result.stdout
    assert "UTC days" in result.stdout and "agree" in result.stdout
    assert salesforce.api_calls - calls <= 2  # one /composite holds the aggregate and the record query


def test_figures_per_shop_and_utc_day(cli, salesforce, week):
    _synced(cli)

    data = _reconcile(cli, DAY1, TODAY, "--json").json

    assert data["outcome"] == "agree" and data["exit_code"] == 0
    assert data["window"]["days"] == "UTC" and data["window"]["field"] == "Transaction_Date__c"
    rows = {(row["day"], row["shop"]): (row["lightspeed"], row["salesforce"], row["agree"])
            for row in data["by_shop_and_day"]}
    both = lambda sales, total: ({"sales": sales, "total": total}, {"sales": sales, "total": total}, True)  # noqa: E731
    assert rows == {(_day(DAY1), "Rue Saint-Honoré"): both(2, 211.0),
                    (_day(DAY2), "Rue Saint-Honoré"): both(1, 120.0),
                    (_day(DAY2), "Le Marais"): both(1, 300.0)}
    assert (data["missing"], data["extra"], data["different"]) == ([], [], [])


def test_each_kind_of_difference_exits_3_and_is_listed_exactly(cli, lightspeed, salesforce, boutique, week):
    _synced(cli)
    unsynced = sell(lightspeed, boutique, at=DAY2 + timedelta(hours=12))  # completed, not written yet
    lightspeed.add_line(week["a"], {"item_id": boutique.bag, "quantity": 1, "unit_price": "80.00"},
                        at=TODAY)  # edited later: Salesforce still has the old total
    lightspeed.void_sale(week["b"], at=TODAY)  # voided later: not reflected yet
    salesforce.insert("Sales_Transaction__c", {"LS_Sale_ID__c": f"{ACCOUNT}-999", "Status__c": "Completed",
                                               "Total__c": 50, "Shop_Name__c": "Le Marais",
                                               "Transaction_Date__c": (DAY2 + timedelta(hours=8)).isoformat()})

    result = _reconcile(cli, DAY1, TODAY, "--json")

    assert result.code == 3, result.stderr
    data = result.json
    assert data["outcome"] == "differ"
    assert data["missing"] == [{"sale_key": f"{ACCOUNT}-{unsynced}", "shop": "Rue Saint-Honoré",
                                "day": _day(DAY2), "total": 120.0, "status": "Completed"}]
    assert data["extra"] == [{"sale_key": f"{ACCOUNT}-999", "shop": "Le Marais", "day": _day(DAY2),
                              "total": 50.0, "status": "Completed"}]
    different = {d["sale_key"]: d for d in data["different"]}
    assert set(different) == {f"{ACCOUNT}-{week['a']}", f"{ACCOUNT}-{week['b']}"}
    edited = different[f"{ACCOUNT}-{week['a']}"]
    assert (edited["fields"], edited["lightspeed"]["total"], edited["salesforce"]["total"]) == (["Total__c"], 200.0, 120.0)
    voided = different[f"{ACCOUNT}-{week['b']}"]
    assert (voided["fields"], voided["lightspeed"]["status"], voided["salesforce"]["status"]) == \
        (["Status__c"], "Voided", "Completed")
    rows = {(row["day"], row["shop"]): row for row in data["by_shop_and_day"]}
    assert rows[(_day(DAY1), "Rue Saint-Honoré")]["lightspeed"] == {"sales": 2, "total": 291.0}
    assert rows[(_day(DAY1), "Rue Saint-Honoré")]["salesforce"] == {"sales": 2, "total": 211.0}
    assert rows[(_day(DAY2), "Le Marais")]["salesforce"] == {"sales": 2, "total": 350.0}
    assert not rows[(_day(DAY2), "Le Marais")]["agree"]

    plain = _reconcile(cli)
    assert plain.code == 3
    assert f"missing in Salesforce: {ACCOUNT}-{unsynced} (Rue Saint-Honoré, {_day(DAY2)}, Completed 120.00)" \
        in plain.stdout
    assert f"extra in Salesforce: {ACCOUNT}-999" in plain.stdout
    assert f"different: {ACCOUNT}-{week['a']}: Total__c 200.00 in Lightspeed, 120.00 in Salesforce" in plain.stdout
    assert f"different: {ACCOUNT}-{week['b']}: Status__c Voided in Lightspeed, Completed in Salesforce" in plain.stdout
    assert "they differ" in plain.stdout.splitlines()[-1]


def test_after_a_sync_the_same_window_agrees_again(cli, lightspeed, salesforce, boutique, week):
    _synced(cli)
    lightspeed.void_sale(week["c"])
    assert _reconcile(cli).code == 3

    assert cli("sync").code == 0

    assert _reconcile(cli).code == 0


def test_window_is_half_open_on_completion_time_and_keeps_to_the_account(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique, at=DAY1)
    sell(lightspeed, boutique, at=DAY2)  # exactly --to: the next window's
    _synced(cli)
    salesforce.insert("Sales_Transaction__c", {"LS_Sale_ID__c": "999999-1", "Status__c": "Completed", "Total__c": 9,
                                               "Transaction_Date__c": (DAY1 + timedelta(hours=1)).isoformat()})

    data = _reconcile(cli, DAY1, DAY2, "--json").json

    assert data["exit_code"] == 0, data
    # The sale at exactly --from is in, the one at exactly --to and the other account's are out.
    assert (data["lightspeed"]["sales"], data["salesforce"]["sales"]) == (1, 1)
    assert [row["day"] for row in data["by_shop_and_day"]] == [_day(DAY1)]
    assert data["window"] == {"from": DAY1.isoformat(), "to": DAY2.isoformat(), "field": "Transaction_Date__c",
                              "days": "UTC", "to_excluded": True}


def test_lightspeed_is_read_by_completion_time_without_relations(cli, lightspeed, week):
    _synced(cli)
    _reconcile(cli)
    [read] = [r for r in lightspeed.requests if "completeTime" in r.query]
    assert (read.query["sort"], read.query["completed"], read.query["archived"]) == (["completeTime"], ["true"], ["true"])
    assert read.query["completeTime"][0].startswith("><,") and "load_relations" not in read.query


def test_sale_lightspeed_sends_unreadable_is_listed_and_exits_3(cli, lightspeed, boutique, week):
    _synced(cli)
    lightspeed.corrupt_sale(week["c"], calcTotal="12,50")

    data = _reconcile(cli, DAY1, TODAY, "--json").json

    assert data["exit_code"] == 3
    assert data["unreadable"] == [{"sale_id": str(week["c"]), "reason": "calcTotal: Invalid decimal string: '12,50'"}]
    assert data["extra"] == [{"sale_key": f"{ACCOUNT}-{week['c']}", "shop": "Rue Saint-Honoré", "day": _day(DAY2),
                              "total": 120.0, "status": "Completed"}]


def test_long_window_splits_the_aggregate_at_utc_midnights_in_the_same_call(cli, lightspeed, salesforce, boutique):
    since = DAY1 - timedelta(days=1100)
    cut = since + timedelta(days=1000)  # one shop: 2000 // (1 + 1) days per aggregate query
    for moment in (since, cut - timedelta(seconds=1), cut, DAY1):
        sell(lightspeed, boutique, at=moment)
    assert cli("backfill", "--from", since.isoformat()).code == 0
    calls = salesforce.api_calls

    data = _reconcile(cli, since, TODAY, "--json").json

    assert data["exit_code"] == 0, data
    assert (data["lightspeed"]["sales"], data["salesforce"]["sales"]) == (4, 4)
    assert [(row["day"], row["salesforce"]["sales"]) for row in data["by_shop_and_day"]] == [
        (_day(since), 1), (_day(cut - timedelta(seconds=1)), 1), (_day(cut), 1), (_day(DAY1), 1)]
    assert salesforce.api_calls - calls == 1
    queries = [sub["url"] for sub in salesforce.requests[-1].subrequests]
    assert len(queries) == 3 and sum("GROUP+BY" in url or "GROUP%20BY" in url for url in queries) == 2


@pytest.mark.parametrize("args", [
    ("--from", "2026-03-02", "--to", "2026-03-01"),
    ("--from", "yesterday", "--to", "2026-03-01"),
    ("--from", "2026-03-01"),
])
def test_bad_window_is_a_usage_error(cli, salesforce, args):
    result = cli("reconcile", *args)
    assert result.code == 2
    assert salesforce.api_calls == 0


# ---- the aggregate SOQL it sends, as the emulator answers it ----------------------------------------------------


@pytest.fixture
def client(salesforce):
    with httpx.Client(base_url=salesforce.instance_url, headers={"Authorization": f"Bearer {salesforce.access_token}"},
                      verify=ssl.create_default_context(cafile=str(salesforce.ca_bundle))) as c:
        yield c


def _query(client: httpx.Client, soql: str) -> httpx.Response:
    return client.get(f"{API}/query", params={"q": soql})


def _sale(salesforce, key: str, when: str, total: float | None, shop: str | None = "Paris") -> None:
    salesforce.insert("Sales_Transaction__c", {"LS_Sale_ID__c": key, "Transaction_Date__c": when,
                                               "Total__c": total, "Shop_Name__c": shop})


def test_aggregate_rows_group_by_shop_and_utc_day_with_aliases(salesforce, client):
    _sale(salesforce, "1-1", "2026-03-01T23:30:00Z", 10.5)
    _sale(salesforce, "1-2", "2026-03-01T22:00:00-02:00", 4.25)  # 00:00 UTC on the 2nd
    _sale(salesforce, "1-3", "2026-03-01T08:00:00Z", 1)
    _sale(salesforce, "1-4", "2026-03-01T09:00:00Z", None, shop=None)

    body = _query(client, "SELECT Shop_Name__c, DAY_ONLY(Transaction_Date__c) d, COUNT(Id) n, SUM(Total__c) t "
                          "FROM Sales_Transaction__c GROUP BY Shop_Name__c, DAY_ONLY(Transaction_Date__c) "
                          "ORDER BY Shop_Name__c").json()

    assert (body["totalSize"], body["done"], "nextRecordsUrl" in body) == (3, True, False)
    assert body["records"] == [
        {"attributes": {"type": "AggregateResult"}, "Shop_Name__c": None, "d": "2026-03-01", "n": 1, "t": None},
        {"attributes": {"type": "AggregateResult"}, "Shop_Name__c": "Paris", "d": "2026-03-01", "n": 2, "t": 11.5},
        {"attributes": {"type": "AggregateResult"}, "Shop_Name__c": "Paris", "d": "2026-03-02", "n": 1, "t": 4.25},
    ]


def test_unaliased_aggregates_are_expr0_expr1_and_count_field_skips_nulls(salesforce, client):
    _sale(salesforce, "1-1", "2026-03-01T10:00:00Z", 3)
    _sale(salesforce, "1-2", "2026-03-01T11:00:00Z", None)

    [row] = _query(client, "SELECT COUNT(Id), COUNT(Total__c), SUM(Total__c) total FROM Sales_Transaction__c "
                           "WHERE LS_Sale_ID__c LIKE '1-%'").json()["records"]

    assert row == {"attributes": {"type": "AggregateResult"}, "expr0": 2, "expr1": 1, "total": 3.0}
    [empty] = _query(client, "SELECT COUNT(Id), SUM(Total__c) FROM Sales_Transaction__c "
                             "WHERE LS_Sale_ID__c = 'none'").json()["records"]
    assert (empty["expr0"], empty["expr1"]) == (0, None)


def test_more_than_2000_groups_are_refused_not_paged(salesforce, client):
    for i in range(2001):
        _sale(salesforce, f"1-{i}", "2026-03-01T10:00:00Z", 1, shop=f"shop {i}")
    soql = "SELECT Shop_Name__c, COUNT(Id) FROM Sales_Transaction__c GROUP BY Shop_Name__c"

    refused = _query(client, soql)
    limited = _query(client, soql + " LIMIT 2000").json()

    assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    assert "does not support queryMore()" in refused.json()[0]["message"]
    assert (limited["totalSize"], limited["done"], "nextRecordsUrl" in limited) == (2000, True, False)


@pytest.mark.parametrize("soql, code", [
    ("SELECT Shop_Name__c s FROM Sales_Transaction__c", "MALFORMED_QUERY"),  # aliases only in aggregate queries
    ("SELECT Shop_Name__c, COUNT(Id) FROM Sales_Transaction__c", "MALFORMED_QUERY"),  # neither grouped nor aggregated
    ("SELECT Status__c, COUNT(Id) FROM Sales_Transaction__c GROUP BY Shop_Name__c", "MALFORMED_QUERY"),
    ("SELECT COUNT(Id) n, SUM(Total__c) n FROM Sales_Transaction__c", "MALFORMED_QUERY"),
    ("SELECT COUNT(), Shop_Name__c FROM Sales_Transaction__c GROUP BY Shop_Name__c", "MALFORMED_QUERY"),
    ("SELECT COUNT(Id) FROM Sales_Transaction__c LIMIT 5", "MALFORMED_QUERY"),
    ("SELECT AVG(Total__c) FROM Sales_Transaction__c", "MALFORMED_QUERY"),  # outside the emulated subset
    ("SELECT SUM(Shop_Name__c) FROM Sales_Transaction__c", "INVALID_FIELD"),
    ("SELECT Total__c, COUNT(Id) FROM Sales_Transaction__c GROUP BY Total__c", "INVALID_FIELD"),
    ("SELECT DAY_ONLY(Shop_Name__c), COUNT(Id) FROM Sales_Transaction__c GROUP BY DAY_ONLY(Shop_Name__c)",
     "INVALID_FIELD"),
    ("SELECT COUNT(Nope__c) FROM Sales_Transaction__c", "INVALID_FIELD"),
])
def test_aggregate_queries_salesforce_refuses(client, soql, code):
    response = _query(client, soql)
    assert response.status_code == 400 and response.json()[0]["errorCode"] == code
