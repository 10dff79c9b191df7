"""Tests that pin the Lightspeed R-Series emulator's documented behaviour, over real HTTP with httpx."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Iterator

import httpx
import pytest

from lspos_sync.emulators.lightspeed import LightspeedAccount, LightspeedEmulator

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
ALL = json.dumps(["SaleLines", "SaleLines.Item", "SalePayments", "SalePayments.PaymentType", "Customer",
                  "Customer.Contact"])


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emu(clock: FakeClock) -> Iterator[LightspeedEmulator]:
    # generous limits so that only the rate-limit tests meet the limiter
    with LightspeedEmulator(clock=clock, bucket_size=10_000, burst_limit=10_000) as emulator:
        yield emulator


def refresh(emu: LightspeedAccount, refresh_token: str | None = None) -> httpx.Response:
    return httpx.post(emu.token_url, data={"grant_type": "refresh_token", "client_id": emu.client_id,
                                           "client_secret": emu.client_secret,
                                           "refresh_token": refresh_token or emu.current_refresh_token})


def client(emu: LightspeedAccount) -> httpx.Client:
    token = refresh(emu).json()["access_token"]
    return httpx.Client(base_url=f"{emu.api_url}/Account/{emu.account_id}",
                        headers={"Authorization": f"Bearer {token}"})


def seed_store(emu: LightspeedAccount) -> dict[str, int]:
    ids = {"shop": emu.add_shop("Main St"), "cash": emu.add_payment_type("Cash", "cash"),
           "item": emu.add_item("Mug", custom_sku="MUG-1"),
           "customer": emu.add_customer("Ada", "Lovelace", email="ada@example.com", phones={"Mobile": "555 0100"})}
    return ids


def collect(http: httpx.Client, path: str, params: dict[str, str]) -> list[dict]:
    rows, response = [], http.get(path, params=params or None)
    while True:
        body = response.raise_for_status().json()
        page = body.get("Sale", [])
        rows += [page] if isinstance(page, dict) else page
        if not body["@attributes"]["next"]:
            return rows
        response = http.get(body["@attributes"]["next"])


def leaves(value: object) -> Iterator[object]:
    if isinstance(value, dict):
        for child in value.values():
            yield from leaves(child)
    elif isinstance(value, list):
        for child in value:
            yield from leaves(child)
    else:
        yield value


@pytest.mark.parametrize("sort", ["saleID", "timeStamp", "-updatetime", "completeTime"])
def test_following_next_to_the_end_yields_every_sale_exactly_once(emu, clock, sort):
    ids = seed_store(emu)
    made = [emu.add_sale(ids["shop"], [{"item_id": ids["item"], "quantity": 1, "unit_price": "5"}],
                         completed=n % 3 != 0, at=clock.advance(n % 4))  # repeated times test the ID tiebreak
            for n in range(23)]
    with client(emu) as http:
        first = http.get("Sale.json", params={"sort": sort, "limit": "5"}).json()
        rows = collect(http, "Sale.json", {"sort": sort, "limit": "5"})
    assert first["@attributes"]["previous"] == ""
    assert sorted(int(r["saleID"]) for r in rows) == made


def test_next_url_is_absolute_and_carries_params_sort_limit_and_a_base64_cursor(emu):
    ids = seed_store(emu)
    for _ in range(3):
        emu.add_sale(ids["shop"], [])
    with client(emu) as http:
        body = http.get("Sale.json", params={"limit": "2", "completed": "true"}).json()
        second = http.get(body["@attributes"]["next"]).json()
        back = http.get(second["@attributes"]["previous"]).json()
    url = httpx.URL(body["@attributes"]["next"])
    prefix = f"{emu.api_url}/Account/{emu.account_id}/Sale.json?completed=true&sort=saleID&limit=2&after="
    assert str(url).startswith(prefix)
    assert json.loads(base64.b64decode(url.params["after"])) == [2]
    assert second["Sale"]["saleID"] == "3" and second["@attributes"]["next"] == ""
    assert [s["saleID"] for s in back["Sale"]] == ["1", "2"] and back["@attributes"]["previous"] == ""


def test_a_row_edited_mid_crawl_jumps_past_the_cursor_and_is_seen_twice(emu, clock):
    ids = seed_store(emu)
    for _ in range(4):
        emu.add_sale(ids["shop"], [{"item_id": ids["item"], "quantity": 1, "unit_price": "1"}], at=clock.advance(1))
    with client(emu) as http:
        first = http.get("Sale.json", params={"sort": "updatetime", "limit": "2"}).json()
        emu.set_line_quantity(1, 5, at=clock.advance(60))  # sale 1 is now the most recently updated
        rest = collect(http, first["@attributes"]["next"], {})
    assert [s["saleID"] for s in first["Sale"]] + [s["saleID"] for s in rest] == ["1", "2", "3", "4", "1"]


def test_a_full_last_page_links_to_an_empty_page_without_a_sale_key(emu):
    ids = seed_store(emu)
    emu.add_sale(ids["shop"], [])
    emu.add_sale(ids["shop"], [])
    with client(emu) as http:
        body = http.get("Sale.json", params={"limit": "2"}).json()
        last = http.get(body["@attributes"]["next"]).json()
    assert len(body["Sale"]) == 2
    assert last == {"@attributes": {"next": "", "previous": ""}}


def test_a_query_matching_one_sale_returns_a_lone_object_with_lone_children(emu):
    ids = seed_store(emu)
    sale_id = emu.add_sale(ids["shop"], [{"item_id": ids["item"], "quantity": 2, "unit_price": "4.50"}],
                           customer_id=ids["customer"], payments=[{"payment_type_id": ids["cash"], "amount": "9"}])
    with client(emu) as http:
        body = http.get("Sale.json", params={"saleID": str(sale_id), "load_relations": ALL}).json()
    sale = body["Sale"]
    assert isinstance(sale, dict)
    assert isinstance(sale["SaleLines"]["SaleLine"], dict)
    assert sale["SaleLines"]["SaleLine"]["Item"]["customSku"] == "MUG-1"
    assert sale["SalePayments"]["SalePayment"]["PaymentType"]["name"] == "Cash"
    contact = sale["Customer"]["Contact"]
    assert contact["Phones"]["ContactPhone"] == {"number": "555 0100", "useType": "Mobile"}
    assert contact["Emails"]["ContactEmail"]["address"] == "ada@example.com"
    assert contact["Addresses"] == ""


def test_every_value_is_a_string_and_a_missing_foreign_key_is_zero(emu):
    ids = seed_store(emu)
    emu.add_sale(ids["shop"], [{"item_id": None, "quantity": 1, "unit_price": "9.99", "tax1": "0.05",
                                "tax2": "0.09975"}, {"item_id": ids["item"], "quantity": 1, "unit_price": "20",
                                                     "tax1": "0.05", "tax2": "0.09975"}],
                 payments=[{"payment_type_id": ids["cash"], "amount": "34.48"}])
    with client(emu) as http:
        sale = http.get("Sale/1.json", params={"load_relations": "all"}).json()["Sale"]
    assert all(isinstance(leaf, str) for leaf in leaves(sale))
    assert sale["customerID"] == "0" and "Customer" not in sale
    line = sale["SaleLines"]["SaleLine"][0]
    assert line["itemID"] == "0" and line["parentSaleLineID"] == "0" and "Item" not in line
    # the docs' sale 277: line calcs keep full precision, sale totals round each tax to cents
    assert (line["calcTax1"], line["calcTax2"], line["calcTotal"]) == ("0.4995", "0.9965025", "11.4860025")
    assert (sale["calcTax1"], sale["calcTax2"], sale["calcTotal"]) == ("1.5", "2.99", "34.48")


def test_relations_are_loaded_only_when_asked_and_empty_ones_are_absent(emu):
    ids = seed_store(emu)
    emu.add_sale(ids["shop"], [], customer_id=ids["customer"])
    with client(emu) as http:
        plain = http.get("Sale/1.json").json()["Sale"]
        some = http.get("Sale/1.json", params={"load_relations": '["Customer", "Bogus"]'}).json()["Sale"]
        bad = http.get("Sale/1.json", params={"load_relations": "SaleLines"})
    assert not {"SaleLines", "SalePayments", "Customer"} & plain.keys()
    assert "Contact" not in some["Customer"] and "SaleLines" not in some
    assert bad.status_code == 400


def test_no_match_has_no_sale_key(emu):
    with client(emu) as http:
        body = http.get("Sale.json", params={"shopID": "99"}).json()
    assert body == {"@attributes": {"next": "", "previous": ""}}


def test_updatetime_between_filter_is_inclusive_and_accepts_every_offset_style(emu, clock):
    ids = seed_store(emu)
    for minutes in (0, 10, 20, 30):
        emu.add_sale(ids["shop"], [], at=T0 + timedelta(minutes=minutes))
    with client(emu) as http:
        def matching(value: str) -> list[str]:
            body = http.get("Sale.json", params={"updatetime": value}).json()
            found = body.get("Sale", [])
            return [s["saleID"] for s in ([found] if isinstance(found, dict) else found)]

        assert matching("><,2026-03-01T09:40:00+00:00,2026-03-01T10:00:00+00:00") == ["2", "3", "4"]
        assert matching("><,2026-03-01T05:40:00-0400,2026-03-01T09:50:00Z") == ["2", "3"]
        assert matching(">=,2026-03-01T09:50:00Z") == ["3", "4"]


def test_unencoded_plus_in_an_offset_is_rejected(emu):
    with client(emu) as http:
        response = http.get("Sale.json?timeStamp=%3E%2C2026-03-01T09:30:00+00:00")
    assert response.status_code == 400


def test_in_and_plain_filters_and_the_in_cap(emu):
    ids = seed_store(emu)
    for _ in range(4):
        emu.add_sale(ids["shop"], [])
    with client(emu) as http:
        hits = http.get("Sale.json", params={"saleID": "IN,[1,3,4]", "completed": "true"}).json()["Sale"]
        too_many = http.get("Sale.json", params={"saleID": f"IN,[{','.join(map(str, range(101)))}]"})
    assert [s["saleID"] for s in hits] == ["1", "3", "4"]
    assert too_many.status_code == 400


def test_edits_after_completion_move_updatetime_but_not_timestamp(emu, clock):
    ids = seed_store(emu)
    sale_id = emu.add_sale(ids["shop"], [{"item_id": ids["item"], "quantity": 1, "unit_price": "5"}],
                           completed=False)
    done = clock.advance(60)
    emu.complete_sale(sale_id)
    after = emu.sale(sale_id)
    assert after["timeStamp"] == after["updatetime"] == after["completeTime"] == "2026-03-01T09:31:00+00:00"
    line_id = int(after["SaleLines"]["SaleLine"]["saleLineID"])
    emu.set_line_quantity(line_id, 3, at=done + timedelta(minutes=5))
    emu.void_sale(sale_id, at=done + timedelta(minutes=9))
    with client(emu) as http:
        edited = http.get(f"Sale/{sale_id}.json").json()["Sale"]
        moved = http.get("Sale.json", params={"updatetime": ">,2026-03-01T09:35:00+00:00"}).json()
        pinned = http.get("Sale.json", params={"timeStamp": ">,2026-03-01T09:35:00+00:00"}).json()
    assert edited["timeStamp"] == edited["completeTime"] == "2026-03-01T09:31:00+00:00"
    assert edited["updatetime"] == "2026-03-01T09:40:00+00:00" and edited["voided"] == "true"
    assert moved["Sale"]["saleID"] == str(sale_id) and "Sale" not in pinned


def test_open_sales_move_timestamp_and_have_no_complete_time(emu, clock):
    ids = seed_store(emu)
    sale_id = emu.add_sale(ids["shop"], [], completed=False)
    emu.add_line(sale_id, {"item_id": ids["item"], "quantity": 1, "unit_price": "2"}, at=clock.advance(30))
    sale = emu.sale(sale_id)
    assert sale["timeStamp"] == sale["updatetime"] == "2026-03-01T09:30:30+00:00"
    assert sale["createTime"] == "2026-03-01T09:30:00+00:00" and "completeTime" not in sale


def test_refund_is_a_new_sale_with_negative_quantities_and_parent_lines(emu, clock):
    ids = seed_store(emu)
    original = emu.add_sale(ids["shop"], [{"item_id": ids["item"], "quantity": 2, "unit_price": "10", "tax1": "0.05"},
                                          {"item_id": ids["item"], "quantity": 1, "unit_price": "3"}],
                            payments=[{"payment_type_id": ids["cash"], "amount": "24"}])
    before = emu.sale(original)
    first_line = before["SaleLines"]["SaleLine"][0]["saleLineID"]
    refund_id = emu.refund_sale(original, [int(first_line)], at=clock.advance(3600))
    with client(emu) as http:
        refund = http.get(f"Sale/{refund_id}.json", params={"load_relations": ALL}).json()["Sale"]
    line = refund["SaleLines"]["SaleLine"]
    assert refund_id != original and refund["completed"] == "true"
    assert line["unitQuantity"] == "-2" and line["unitPrice"] == "10" and line["parentSaleLineID"] == first_line
    assert refund["calcTotal"] == "-21" and refund["SalePayments"]["SalePayment"]["amount"] == "-21"
    assert emu.sale(original) == before


def test_rotation_defers_revoking_the_old_refresh_token_until_the_new_access_token_is_used(emu):
    old = emu.current_refresh_token
    first = refresh(emu, old).json()
    retried = refresh(emu, old)  # as after a lost response: the old refresh token still works
    assert retried.status_code == 200 and emu.refresh_count == 2
    newest = retried.json()
    assert len(newest["access_token"]) > 500 and newest["token_type"] == "Bearer"
    headers = {"Authorization": f"Bearer {first['access_token']}"}
    assert httpx.get(f"{emu.api_url}/Account.json", headers=headers).status_code == 401  # superseded
    headers = {"Authorization": f"Bearer {newest['access_token']}"}
    assert httpx.get(f"{emu.api_url}/Account.json", headers=headers).status_code == 200
    rejected = refresh(emu, old)
    assert rejected.status_code == 400 and rejected.json()["error"] == "invalid_grant"
    assert emu.current_refresh_token == newest["refresh_token"]
    assert refresh(emu, newest["refresh_token"]).status_code == 200
    assert httpx.get(f"{emu.api_url}/Account.json", headers=headers).status_code == 401  # rotated away at once


def test_a_refresh_whose_response_was_dropped_can_be_retried(emu):
    emu.drop_next(path_suffix="/auth/oauth/token")
    with pytest.raises(httpx.TransportError):
        refresh(emu, "ls-refresh-0")
    assert emu.refresh_count == 1 and refresh(emu, "ls-refresh-0").status_code == 200


def test_a_refresh_token_left_unused_for_30_days_has_expired(emu, clock):
    # §7: "unused refresh tokens expire after 30 days"
    clock.advance(30 * 86400)
    assert refresh(emu, "ls-refresh-0").status_code == 200  # 30 days to the second: still good
    clock.advance(30 * 86400 + 1)
    expired = refresh(emu)
    assert expired.status_code == 400 and expired.json()["error"] == "invalid_grant"
    emu.refresh_token_lifetime = None
    assert refresh(emu, emu.reauthorise()).status_code == 200


def test_more_than_five_token_requests_a_minute_are_refused_429(emu):
    # §7: at most 5 refresh attempts a minute per connection; Lightspeed limits clients that refresh too much
    other = emu.add_account("190001", refresh_token="ls-refresh-b")
    answers = [refresh(emu, "ls-refresh-0") for _ in range(6)]  # retries of one token, as after lost answers
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert answers[-1].json()["error"] == "too_many_requests" and 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert refresh(other, "ls-refresh-b").status_code == 200  # per connection: another account's are its own
    emu.max_token_requests_per_minute = None
    assert refresh(emu, "ls-refresh-0").status_code == 200


def test_expired_access_token_is_401(emu, clock):
    with client(emu) as http:
        assert http.get("Sale.json").status_code == 200
        clock.advance(3600)
        expired = http.get("Sale.json")
    assert expired.status_code == 401
    assert expired.json()["message"] == "Access token could not be verified"


def test_missing_token_and_revoked_app_are_rejected(emu):
    assert httpx.get(f"{emu.api_url}/Account/{emu.account_id}/Sale.json").status_code == 401
    with client(emu) as http:
        emu.revoke_all_tokens()
        assert http.get("Sale.json").status_code == 401
    assert refresh(emu, "ls-refresh-0").json()["error"] == "invalid_grant"


def test_reauthorising_gives_a_refresh_token_that_starts_a_new_chain_on_its_account(emu):
    other = emu.add_account("190001", refresh_token="ls-refresh-b")
    emu.revoke_all_tokens()
    fresh = emu.reauthorise()
    granted = refresh(emu, fresh)
    assert granted.status_code == 200 and granted.json()["refresh_token"] != fresh
    with httpx.Client(headers={"Authorization": f"Bearer {granted.json()['access_token']}"}) as http:
        assert http.get(f"{emu.api_url}/Account/{emu.account_id}/Sale.json").status_code == 200
    assert refresh(emu, fresh).json()["error"] == "invalid_grant"  # rotated away once the new token was used
    assert refresh(emu, "ls-refresh-0").json()["error"] == "invalid_grant"  # the revoked chain stays revoked
    assert (emu.refresh_count, other.refresh_count) == (1, 0)


@pytest.mark.parametrize("scopes, refused", [
    ("employee:register_read employee:customers_read employee:admin_void_sale", set()),
    ("employee:all", set()),
    ("employee:register employee:customers_read", {"SaleVoid.json"}),
    ("employee:customers_read employee:admin_void_sale", {"Sale.json"}),
    ("employee:register_read", {"Customer.json", "SaleVoid.json"}),
])
def test_each_entity_needs_a_scope_that_reads_it(emu, scopes, refused):
    # §1: register_read (or register) reads sales, customers_read customers, admin_void_sale the void records; all
    # reads everything; the sheet names no scope for shops, items or payment types
    emu.scopes = scopes
    with client(emu) as http:
        answers = {path: http.get(path) for path in ("Sale.json", "Customer.json", "SaleVoid.json", "Shop.json",
                                                     "Item.json", "PaymentType.json")}
    assert {path for path, answer in answers.items() if answer.status_code == 403} == refused
    assert all(answer.status_code == 200 for path, answer in answers.items() if path not in refused)
    for path in refused:
        assert answers[path].json()["errorClass"] == "InsufficientRightsException"


def test_json_refresh_with_scope_is_rejected_and_bad_client_is_invalid_client(emu):
    body = {"grant_type": "refresh_token", "refresh_token": "ls-refresh-0", "client_id": emu.client_id,
            "client_secret": emu.client_secret}
    with_scope = httpx.post(emu.token_url, json={**body, "scope": "employee:all"})
    assert with_scope.status_code == 400 and with_scope.json()["error"] == "invalid_grant"
    bad_client = httpx.post(emu.token_url, data={**body, "client_secret": "nope"})
    assert bad_client.status_code == 401 and bad_client.json()["error"] == "invalid_client"
    assert httpx.post(emu.token_url, json=body).status_code == 200


def test_leaky_bucket_lets_one_overflow_then_429s_with_an_integer_retry_after():
    with LightspeedEmulator(bucket_size=10, drip_rate=0.5) as emu, client(emu) as http:
        emu.set_bucket_level(9.5)
        allowed = http.get("Sale.json", params={"load_relations": ALL})
        limited = http.get("Sale.json")
    level, size = (float(x) for x in allowed.headers["x-ls-api-bucket-level"].split("/"))
    assert allowed.status_code == 200 and size == 10 and 12.4 < level <= 12.5
    assert float(allowed.headers["x-ls-api-request-cost"]) == 3  # 1 + doubled relation surcharges
    assert float(allowed.headers["x-ls-api-drip-rate"]) == 0.5
    assert allowed.headers["x-ls-api-burst-level"] == "1/20"
    assert limited.status_code == 429
    assert limited.headers["x-ls-api-ratelimit-type"] == "api-leaky-bucket"
    assert limited.headers["retry-after"] in ("7", "8")  # (12.5 + 1 - 10) / 0.5 = 7 s, ceiled
    assert limited.json()["httpCode"] == "429"


def test_burst_limiter_429s_past_the_per_second_cap():
    with LightspeedEmulator(burst_limit=3) as emu, client(emu) as http:
        responses = [http.get("Shop.json") for _ in range(10)]
    burst = [r for r in responses if r.status_code == 429]
    assert len(burst) >= 4
    assert burst[0].headers["x-ls-api-ratelimit-type"] == "api-burst-limiter"
    assert burst[0].headers["retry-after"] == "1"
    assert "burst rate limit exceeded" in burst[0].json()["message"]


def test_fail_next_and_drop_next_hit_only_matching_paths(emu):
    with client(emu) as http:
        emu.fail_next(2, status=429, retry_after=4)
        assert http.get("Shop.json").status_code == 200
        first = http.get("Sale.json")
        assert first.status_code == 429 and first.headers["retry-after"] == "4"
        assert first.headers["x-ls-api-ratelimit-type"] == "api-leaky-bucket"
        assert http.get("Sale.json").status_code == 429
        emu.drop_next()
        with pytest.raises(httpx.TransportError):
            http.get("Sale.json")
        assert http.get("Sale.json").status_code == 200
    assert emu.request_count("Sale.json", status=429) == 2
    assert emu.request_count("Sale.json", status=0) == 1
    assert emu.requests[-1].path.endswith("Sale.json")


def test_cut_next_cuts_a_body_and_stick_next_gives_a_follow_up_page_its_own_url_as_next(emu):
    ids = seed_store(emu)
    for _ in range(3):
        emu.add_sale(ids["shop"], [{"item_id": ids["item"], "quantity": 1, "unit_price": "5"}])
    with client(emu) as http:
        emu.cut_next()
        cut = http.get("Sale.json")
        assert cut.status_code == 200 and cut.headers["content-length"] == str(len(cut.content))
        with pytest.raises(ValueError):
            cut.json()
        emu.stick_next()
        first = http.get("Sale.json", params={"limit": "1"}).json()["@attributes"]["next"]
        second = http.get(first)
        assert second.json()["@attributes"]["next"] == str(second.request.url)  # the cursor did not advance
        assert http.get(first).json()["@attributes"]["next"] != first  # once


@pytest.mark.parametrize("params", [{"sort": "createTime"}, {"sort": "-total"}, {"limit": "101"},
                                    {"limit": "-1"}, {"updateTime": ">,2026-01-01"}, {"after": "bm90IGpzb24="},
                                    {"saleID": "abc"}, {"timeStamp": "><,2026-01-01"}, {"archived": "maybe"}])
def test_invalid_list_parameters_are_400(emu, params):
    with client(emu) as http:
        response = http.get("Sale.json", params=params)
    assert response.status_code == 400
    if params.get("sort") == "createTime":
        assert "saleID, timeStamp, completeTime, updatetime" in response.json()["message"]


def test_a_refused_updatetime_filter_is_refused_in_both_spellings_and_sorting_on_it_still_works(emu, clock):
    """§2: sorting Sale on updatetime is documented, filtering on it is not: `reject_updatetime_filter` refuses the
    filter only. A sale edited after completion comes first in a descending sort, page after page."""
    ids = seed_store(emu)
    made = [emu.add_sale(ids["shop"], [], at=clock.advance(60)) for _ in range(5)]
    emu.add_line(made[0], {"item_id": ids["item"], "quantity": 1, "unit_price": "5"}, at=clock.advance(60))
    emu.reject_updatetime_filter = True
    with client(emu) as http:
        for spelling in ("updatetime", "updateTime"):
            assert http.get("Sale.json", params={spelling: ">,2026-01-01T00:00:00Z"}).status_code == 400
        assert http.get("Sale.json", params={"sort": "updatetime"}).status_code == 200
        rows = collect(http, "Sale.json", {"sort": "-updatetime", "limit": "2"})
    assert [int(r["saleID"]) for r in rows] == [made[0], *reversed(made[1:])]


# -- an account that spells the update time `updateTime`, as the 2016 tutorial does (which one the live API uses is
# unconfirmed, §4.6)

def test_spelled_updateTime_every_sale_carries_updateTime_and_none_carries_updatetime(emu, clock):
    ids = seed_store(emu)
    emu.updatetime_spelling = "updateTime"
    made = [emu.add_sale(ids["shop"], [{"item_id": ids["item"], "quantity": 1, "unit_price": "5"}],
                         customer_id=ids["customer"], at=clock.advance(60)) for _ in range(3)]
    emu.add_line(made[0], {"item_id": ids["item"], "quantity": 1, "unit_price": "5"}, at=clock.advance(60))
    with client(emu) as http:
        pages = [http.get("Sale.json", params={"load_relations": ALL, "limit": "2"})]
        pages.append(http.get(pages[0].json()["@attributes"]["next"]))
        alone = http.get(f"Sale/{made[0]}.json", params={"load_relations": ALL})
    listed = pages[0].json()["Sale"] + [pages[1].json()["Sale"]]
    assert [int(s["saleID"]) for s in listed] == made
    assert all("updatetime" not in response.text for response in (*pages, alone))
    assert [s["updateTime"] for s in listed] == ["2026-03-01T09:34:00+00:00", "2026-03-01T09:32:00+00:00",
                                                 "2026-03-01T09:33:00+00:00"]  # the edit moved the first one's
    assert alone.json()["Sale"]["updateTime"] == "2026-03-01T09:34:00+00:00" == emu.sale(made[0])["updateTime"]
    assert "updatetime" not in emu.sale(made[0])


def test_spelled_updateTime_the_filter_and_sort_are_on_updateTime_and_updatetime_is_an_unknown_field(emu, clock):
    ids = seed_store(emu)
    emu.updatetime_spelling = "updateTime"
    made = [emu.add_sale(ids["shop"], [], at=T0 + timedelta(minutes=minutes)) for minutes in (0, 10, 20, 30)]
    emu.add_line(made[0], {"item_id": ids["item"], "quantity": 1, "unit_price": "5"}, at=T0 + timedelta(minutes=40))
    with client(emu) as http:
        # from 09:45 UTC in another offset style: compared as text, "...T05:45:00-0400" would take in 09:40 too
        window = collect(http, "Sale.json", {"updateTime": "><,2026-03-01T05:45:00-0400,2026-03-01T10:10:00Z",
                                             "sort": "updateTime", "limit": "1"})
        newest_first = collect(http, "Sale.json", {"sort": "-updateTime", "limit": "3"})
        refused = [http.get("Sale.json", params=params) for params in (
            {"updatetime": "><,2026-03-01T09:40:00+00:00,2026-03-01T10:10:00+00:00"}, {"sort": "updatetime"},
            {"sort": "-updatetime"})]
        unknown = [http.get("Sale.json", params=params) for params in (
            {"noSuchField": "><,2026-03-01T09:40:00+00:00,2026-03-01T10:10:00+00:00"}, {"sort": "noSuchField"},
            {"sort": "-noSuchField"})]
    assert [int(s["saleID"]) for s in window] == [made[2], made[3], made[0]]
    assert [int(s["saleID"]) for s in newest_first] == [made[0], made[3], made[2], made[1]]
    for response, other in zip(refused, unknown):  # the answer any unknown field gets, naming this one
        assert response.status_code == other.status_code == 400
        assert response.json() == json.loads(other.text.replace("noSuchField", "updatetime"))
    assert "Sortable fields: saleID, timeStamp, completeTime, updateTime" in refused[1].json()["message"]


def test_spelled_updateTime_the_refused_filter_switch_refuses_updateTime(emu, clock):
    ids = seed_store(emu)
    emu.add_sale(ids["shop"], [])
    emu.updatetime_spelling = "updateTime"
    emu.reject_updatetime_filter = True
    with client(emu) as http:
        filtered = http.get("Sale.json", params={"updateTime": ">,2026-01-01T00:00:00Z"})
        sorted_ = http.get("Sale.json", params={"sort": "-updateTime"})
    assert filtered.status_code == 400 and "'updateTime' cannot be used as a search filter" in filtered.text
    assert sorted_.status_code == 200


def test_an_update_time_spelling_not_seen_in_any_source_is_refused(emu):
    with pytest.raises(ValueError, match="updatetime, updateTime"):
        emu.updatetime_spelling = "UpdateTime"
    assert emu.updatetime_spelling == "updatetime"


def test_wrong_account_and_unknown_paths_are_404_with_a_lightspeed_error_body(emu):
    with client(emu) as http:
        wrong = http.get(f"{emu.api_url}/Account/999/Sale.json")
        unknown = http.get("Nope.json")
        account = http.get(f"{emu.api_url}/Account.json").json()
    assert wrong.status_code == unknown.status_code == 404
    assert set(unknown.json()) == {"httpCode", "httpMessage", "message", "errorClass"}
    assert unknown.json()["httpCode"] == "404" and unknown.json()["httpMessage"] == "Not Found"
    assert account["Account"]["accountID"] == emu.account_id


def test_other_entities_list_with_the_same_shapes(emu):
    ids = seed_store(emu)
    emu.add_category("Kitchen")
    with client(emu) as http:
        customer = http.get("Customer.json", params={"load_relations": '["Contact"]'}).json()["Customer"]
        items = http.get("Item.json").json()["Item"]
        types = http.get("PaymentType.json").json()["PaymentType"]
        categories = http.get("Category.json").json()["Category"]
    assert customer["customerID"] == str(ids["customer"]) and "Contact" in customer
    assert items["systemSku"] == "210000000001" and items["categoryID"] == "0"
    assert types["type"] == "cash" and categories["name"] == "Kitchen"


def test_env_points_at_the_running_emulator(emu):
    env = emu.env()
    assert env["LIGHTSPEED_API_URL"] == emu.api_url and env["LIGHTSPEED_TOKEN_URL"] == emu.token_url
    assert env["LIGHTSPEED_REFRESH_TOKEN"] == "ls-refresh-0" and env["LIGHTSPEED_ACCOUNT_ID"] == "182255"


# ---------------------------------------------------------------- several accounts on one server

def claims(access_token: str) -> dict:
    payload = access_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_a_second_account_is_served_from_the_same_urls_with_its_own_data_and_ids(emu):
    other = emu.add_account("190001", refresh_token="ls-refresh-b")
    mine, theirs = seed_store(emu), seed_store(other)
    emu.add_sale(mine["shop"], [])
    other.add_sale(theirs["shop"], [{"item_id": theirs["item"], "quantity": 3, "unit_price": "2"}])
    with client(other) as http:
        sales = http.get("Sale.json").json()["Sale"]
        shop = http.get(f"Shop/{theirs['shop']}.json").json()["Shop"]
    assert other.api_url == emu.api_url and other.token_url == emu.token_url
    assert sales["saleID"] == "1" and sales["calcTotal"] == "6" and shop["shopID"] == "1"
    assert emu.sale(1)["calcTotal"] == "0" and other.sale(1)["calcTotal"] == "6"
    assert emu.request_count("Sale.json") == 0 and other.request_count("Sale.json") == 1


def test_a_refresh_token_names_its_account_and_account_json_lists_only_that_one(emu):
    other = emu.add_account("190001", refresh_token="ls-refresh-b")  # the same app, authorised by a second merchant
    granted = refresh(other, "ls-refresh-b").json()
    headers = {"Authorization": f"Bearer {granted['access_token']}"}
    accounts = httpx.get(f"{emu.api_url}/Account.json", headers=headers).json()
    assert claims(granted["access_token"])["acct"] == "190001"
    assert accounts["Account"]["accountID"] == "190001"
    assert other.refresh_count == 1 and emu.refresh_count == 0
    assert other.request_count("/auth/oauth/token") == 1 and emu.request_count("/auth/oauth/token") == 0


def test_refresh_tokens_rotate_per_account(emu):
    other = emu.add_account("190001", refresh_token="ls-refresh-b")
    with client(emu) as mine, client(other) as theirs:  # each rotates once and uses its new access token
        assert mine.get("Sale.json").status_code == theirs.get("Sale.json").status_code == 200
        first_of_theirs = other.current_refresh_token
        assert refresh(emu).status_code == 200  # the first account rotates again ...
        assert theirs.get("Sale.json").status_code == 200  # ... and the other's access token lives on
    assert other.current_refresh_token == first_of_theirs != emu.current_refresh_token
    assert refresh(other, "ls-refresh-b").json()["error"] == "invalid_grant"  # its own old token is retired
    assert refresh(emu, "ls-refresh-b").json()["error"] == "invalid_grant"
    assert (emu.refresh_count, other.refresh_count) == (2, 1)


def test_token_of_one_account_is_refused_on_another(emu):
    other = emu.add_account("190001", refresh_token="ls-refresh-b")
    seed_store(other)
    with client(emu) as http:
        foreign = http.get(f"{emu.api_url}/Account/190001/Shop.json")
        foreign_account = http.get(f"{emu.api_url}/Account/190001.json")
        unknown = http.get(f"{emu.api_url}/Account/999/Shop.json")
        own = http.get("Shop.json")
    assert foreign.status_code == foreign_account.status_code == 403  # valid token, no access: not 401
    assert foreign.json()["errorClass"] == "InsufficientRightsException" and "Shop" not in foreign.json()
    assert unknown.status_code == 404 and own.status_code == 200
    assert other.request_count("Shop.json", status=403) == 1 and emu.request_count("Shop.json", status=404) == 1


def test_refresh_token_issued_to_another_client_is_an_invalid_grant(emu):
    other = emu.add_account("190001", refresh_token="ls-refresh-b", client_id="other-app", client_secret="s2")
    mixed = httpx.post(emu.token_url, data={"grant_type": "refresh_token", "client_id": emu.client_id,
                                            "client_secret": emu.client_secret, "refresh_token": "ls-refresh-b"})
    unknown = httpx.post(emu.token_url, data={"grant_type": "refresh_token", "client_id": "other-app",
                                              "client_secret": "wrong", "refresh_token": "ls-refresh-b"})
    assert mixed.status_code == 400 and mixed.json()["error"] == "invalid_grant"
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    assert refresh(other).status_code == 200 and other.current_refresh_token != "ls-refresh-b"


def test_two_accounts_have_separate_buckets():
    with LightspeedEmulator(bucket_size=10, drip_rate=0.5) as emu:
        other = emu.add_account("190001")
        with client(emu) as mine, client(other) as theirs:
            emu.set_bucket_level(20)
            drained = mine.get("Sale.json")
            fresh = theirs.get("Sale.json")
    assert drained.status_code == 429 and drained.headers["x-ls-api-ratelimit-type"] == "api-leaky-bucket"
    assert fresh.status_code == 200 and fresh.headers["x-ls-api-bucket-level"] == "1/10"
    assert fresh.headers["x-ls-acct-id"] == "190001"


def test_two_accounts_have_separate_burst_windows():
    with LightspeedEmulator(burst_limit=3) as emu:
        other = emu.add_account("190001")
        with client(emu) as mine, client(other) as theirs:
            burst = [mine.get("Shop.json").status_code for _ in range(6)]
            after = theirs.get("Shop.json")
    assert 429 in burst
    assert after.status_code == 200 and after.headers["x-ls-api-burst-level"] == "1/3"


def test_faults_hit_only_the_account_they_were_set_on(emu):
    other = emu.add_account("190001", refresh_token="ls-refresh-b")
    with client(emu) as mine, client(other) as theirs:
        other.fail_next(status=500)
        other.drop_next(path_suffix="/auth/oauth/token")
        assert mine.get("Sale.json").status_code == 200
        assert theirs.get("Sale.json").status_code == 500
        assert refresh(emu).status_code == 200
        with pytest.raises(httpx.TransportError):
            refresh(other)
    assert emu.request_count(status=500) == 0 and other.request_count("Sale.json", status=500) == 1
    assert other.request_count("/auth/oauth/token", status=0) == 1


def test_account_env_names_each_account_and_accounts_env_shares_the_common_client(emu):
    shared = emu.add_account("190001", refresh_token="ls-refresh-b")
    own = emu.add_account("190002", refresh_token="ls-refresh-c", client_id="other-app", client_secret="s2")
    env = emu.accounts_env()
    assert shared.account_env() == {"LIGHTSPEED_ACCOUNT_190001_CLIENT_ID": emu.client_id,
                                    "LIGHTSPEED_ACCOUNT_190001_CLIENT_SECRET": emu.client_secret,
                                    "LIGHTSPEED_ACCOUNT_190001_REFRESH_TOKEN": "ls-refresh-b"}
    assert env["LIGHTSPEED_ACCOUNTS"] == "182255,190001,190002"
    assert env["LIGHTSPEED_CLIENT_ID"] == emu.client_id and env["LIGHTSPEED_API_URL"] == emu.api_url
    assert env["LIGHTSPEED_ACCOUNT_182255_REFRESH_TOKEN"] == "ls-refresh-0"
    assert "LIGHTSPEED_ACCOUNT_190001_CLIENT_ID" not in env
    assert env["LIGHTSPEED_ACCOUNT_190002_CLIENT_ID"] == "other-app"
    assert own.env()["LIGHTSPEED_ACCOUNT_ID"] == "190002" and own.env()["LIGHTSPEED_CLIENT_SECRET"] == "s2"


def test_an_account_or_refresh_token_cannot_be_registered_twice(emu):
    emu.add_account("190001", refresh_token="ls-refresh-b")
    with pytest.raises(ValueError, match="190001"):
        emu.add_account("190001")
    with pytest.raises(ValueError, match="ls-refresh-0"):
        emu.add_account("190002", refresh_token="ls-refresh-0")


def test_count_answers_only_the_number_of_rows_the_filters_match_for_ten_drips(emu):
    ids = seed_store(emu)
    line = [{"item_id": ids["item"], "quantity": 1, "unit_price": "10"}]
    early, late = datetime(2026, 3, 1, 10, tzinfo=timezone.utc), datetime(2026, 3, 2, 10, tzinfo=timezone.utc)
    for at in (early, early, late):
        emu.add_sale(ids["shop"], line, at=at)
    emu.add_sale(ids["shop"], line, at=early, completed=False)
    window = "><,2026-03-01T00:00:00+00:00,2026-03-01T23:59:59+00:00"
    with client(emu) as http:
        counted = http.get("Sale.json", params={"count": "1", "completed": "true", "updatetime": window})
        every = http.get("Sale.json", params={"count": "1"})
        refused = http.get("Sale.json", params={"count": "1", "limit": "100"})
    assert counted.json() == {"@attributes": {"count": "2"}}
    assert float(counted.headers["x-ls-api-request-cost"]) == 10
    assert every.json() == {"@attributes": {"count": "4"}}
    assert refused.status_code == 400 and "limit" in refused.json()["message"]


def test_customers_are_searched_by_their_timestamp_or_their_loaded_contacts(emu, clock):
    """A Contact edit moves only the Contact's timeStamp (the pessimistic reading: the fact sheet does not say it
    moves the Customer's); a loaded relation is searchable one level deep, and not without loading it (§2)."""
    ada = seed_store(emu)["customer"]
    edited_at = clock.advance(3600)
    emu.edit_contact(ada, email="ada@analytical.example")
    window = f"><,{edited_at.isoformat()},{(edited_at + timedelta(minutes=1)).isoformat()}"
    with client(emu) as http:
        by_customer = http.get("Customer.json", params={"timeStamp": window, "load_relations": '["Contact"]'})
        by_contact = http.get("Customer.json", params={"Contact.timeStamp": window, "load_relations": '["Contact"]'})
        not_loaded = http.get("Customer.json", params={"Contact.timeStamp": window})
        emu.archive_customer(ada, at=clock.advance(60))
        hidden = http.get("Customer.json", params={"customerID": str(ada)}).json()
        archived = http.get("Customer.json", params={"customerID": str(ada), "archived": "true"}).json()["Customer"]
    assert by_customer.status_code == 200 and "Customer" not in by_customer.json()
    found = by_contact.json()["Customer"]
    assert found["Contact"]["Emails"]["ContactEmail"]["address"] == "ada@analytical.example"
    assert found["timeStamp"] < found["Contact"]["timeStamp"]
    assert not_loaded.status_code == 400 and "load the Contact relation" in not_loaded.json()["message"]
    assert "Customer" not in hidden and archived["archived"] == "true"  # deleting a customer archives it (§5)
