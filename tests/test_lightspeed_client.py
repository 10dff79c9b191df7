"""The Lightspeed client reads every page the standard library's JSON reader would read, the same way."""

from __future__ import annotations

import logging

import gc
import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from lspos_sync.errors import RunFailed
from lspos_sync.lightspeed.client import LightspeedClient
from lspos_sync.lightspeed.models import Sale, one_or_many


class _Auth:
    def access_token(self) -> str:
        return "token"


def _client(body: bytes) -> LightspeedClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return LightspeedClient(http, "https://lightspeed.test/API/V3", "1", _Auth())  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [
    '{"@attributes": {"next": ""}, "Sale": {"saleID": "1", "ticketNumber": "Élodie €"}}'.encode(),
    b'\xef\xbb\xbf{"@attributes": {"next": ""}, "Sale": [{"saleID": "1"}, {"saleID": "2"}]}',  # a byte order mark
    b'{"@attributes": {"next": ""}, "Sale": {"saleID": "1", "ticketNumber": "\\ud800"}}',  # a lone surrogate
], ids=["utf-8", "byte order mark", "lone surrogate escape"])
def test_pages_read_as_the_standard_library_reads_them(body):
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = one_or_many(json.loads(body), "Sale")
    assert list(_client(body).sales(since, since, raw=True)) == [rows]
    assert [[row if isinstance(row, Sale) else Sale.of(row) for row in page]
            for page in _client(body).sales(since, since)] == [[Sale.of(row) for row in rows]]


def test_a_page_read_leaves_no_reference_cycle_holding_its_body():
    """httpx's response and its stream refer to each other, so a body kept on the response (600 KB a page) would
    wait for the cyclic garbage collector; the client keeps it out, and a page goes as soon as it is read."""
    rows = [{"saleID": str(i), "ticketNumber": "x" * 300} for i in range(1, 101)]
    body = json.dumps({"@attributes": {"next": "", "previous": ""}, "Sale": rows}).encode()

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        with httpx.Client() as http:
            client = LightspeedClient(http, f"http://127.0.0.1:{server.server_port}/API/V3", "1", _Auth())  # type: ignore[arg-type]
            pages = list(client.sales(since, since))
        gc.collect()
        held = [r for o in gc.garbage for r in gc.get_referents(o)
                if isinstance(r, (bytes, bytearray)) and len(r) >= len(body)]
        cycles = [o for o in gc.garbage if isinstance(o, httpx.Response)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
        server.shutdown()
        server.server_close()
    assert [len(page) for page in pages] == [100]
    assert cycles, "httpx no longer makes the cycle: the streamed read may no longer be needed"
    assert held == []


# -- which reading of the window: filtering on the update time is unconfirmed (fact sheet §2)

SINCE, UNTIL = datetime(2026, 3, 1, 10, tzinfo=timezone.utc), datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


class _Lightspeed:
    """Lists sales by the sort asked for, `size` a page, and answers 400 to the filters and sorts it refuses."""

    def __init__(self, refused: set[str], updated: list[str], size: int = 2) -> None:
        self.refused = refused
        self.sales = [{"saleID": str(i), "completed": "true", "updatetime": f"2026-03-01T{at}:00+00:00",
                       "timeStamp": f"2026-03-01T{at}:00+00:00"} for i, at in enumerate(updated, start=1)]
        self.size = size
        self.asked: list[httpx.QueryParams] = []

    def answer(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        self.asked.append(params)
        if self.refused & {*params.keys(), params.get("sort", "")}:
            return httpx.Response(400, json={"httpCode": "400", "message": "refused"})
        if "count" in params:
            return httpx.Response(200, json={"@attributes": {"count": str(len(self.sales))}})
        sort = params.get("sort", "saleID")
        field_name = sort.lstrip("-").lower()  # updateTime sorts as updatetime
        rows = sorted(self.sales, key=lambda sale: ({k.lower(): v for k, v in sale.items()}[field_name],
                                                    int(sale["saleID"])), reverse=sort.startswith("-"))
        start = int(params.get("after", "0"))
        page = rows[start:start + self.size]
        more = start + self.size < len(rows)
        next_url = str(request.url.copy_set_param("after", str(start + self.size))) if more else ""
        return httpx.Response(200, json={"@attributes": {"next": next_url, "previous": ""}, "Sale": page})

    def client(self) -> LightspeedClient:
        http = httpx.Client(transport=httpx.MockTransport(self.answer))
        return LightspeedClient(http, "https://lightspeed.test/API/V3", "1", _Auth())  # type: ignore[arg-type]


def _read(client: LightspeedClient) -> list[str]:
    return [row["saleID"] for page in client.sales(SINCE, UNTIL, raw=True) for row in page]


def test_a_refused_updatetime_filter_is_tried_as_updateTime_before_anything_else(caplog):
    caplog.set_level(logging.INFO)
    lightspeed = _Lightspeed({"updatetime"}, ["10:30", "11:00"])
    client = lightspeed.client()

    assert _read(client) == ["1", "2"]

    assert [(p.get("updatetime"), p.get("updateTime"), p["sort"]) for p in lightspeed.asked] == [
        ("><,2026-03-01T10:00:00+00:00,2026-03-01T12:00:00+00:00", None, "updatetime"),
        (None, "><,2026-03-01T10:00:00+00:00,2026-03-01T12:00:00+00:00", "updateTime")]
    assert client.oldest_first
    # nothing is missed: said at INFO, so that cron runs against an API spelling it so stay quiet
    assert [(r.levelname, r.getMessage()) for r in caplog.records if "refused" in r.getMessage()] == [
        ("INFO", "Lightspeed refused filtering on updatetime (HTTP 400: refused); filtering on updateTime instead")]


def test_with_both_spellings_refused_the_window_is_read_newest_first_down_to_its_start(caplog):
    caplog.set_level(logging.INFO)
    # two sales changed after the window's end, three in it, two before it: 2 a page, newest first
    lightspeed = _Lightspeed({"updatetime", "updateTime"}, ["09:00", "13:00", "10:00", "12:30", "11:00", "09:30",
                                                            "11:59"])
    client = lightspeed.client()

    assert _read(client) == ["7", "5", "3"]

    newest_first = [p for p in lightspeed.asked if p.get("sort") == "-updatetime"]
    assert len(newest_first) == 3  # [13:00, 12:30], [11:59, 11:00], [10:00, 09:30]: the fourth page is not asked for
    assert all(not {"updatetime", "updateTime", "timeStamp"} & set(p.keys()) for p in newest_first)
    first = newest_first[0]
    assert (first["completed"], first["limit"], first["load_relations"][:13]) == ("true", "100", '["SaleLines",')
    assert not client.oldest_first
    assert "sort=-updatetime" in caplog.text and caplog.text.count("refused filtering on updatetime") == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing is missed


def test_where_only_updateTime_sorts_and_no_filter_is_taken_the_window_is_read_newest_first_on_updateTime():
    lightspeed = _Lightspeed({"updatetime", "updateTime", "-updatetime"}, ["09:00", "13:00", "10:00", "11:00"])
    client = lightspeed.client()

    assert _read(client) == ["4", "3"]

    assert [p["sort"] for p in lightspeed.asked][:4] == ["updatetime", "updateTime", "-updatetime", "-updateTime"]
    assert not client.oldest_first


def test_a_sale_changed_at_the_window_s_edges_is_read_and_one_without_an_update_time_is_kept():
    lightspeed = _Lightspeed({"updatetime", "updateTime"}, ["12:00", "10:00", "09:59"])
    lightspeed.sales[2]["updatetime"] = ""

    assert _read(lightspeed.client()) == ["1", "2", "3"]  # the reader checks the window on its timeStamp


def test_with_sorting_on_updatetime_refused_too_the_window_is_filtered_on_timestamp_with_a_warning(caplog):
    lightspeed = _Lightspeed({"updatetime", "updateTime", "-updatetime", "-updateTime"}, ["10:30"])
    client = lightspeed.client()

    assert _read(client) == ["1"]

    assert [p["sort"] for p in lightspeed.asked] == ["updatetime", "updateTime", "-updatetime", "-updateTime",
                                                     "timeStamp"]
    assert lightspeed.asked[-1]["timeStamp"] == "><,2026-03-01T10:00:00+00:00,2026-03-01T12:00:00+00:00"
    assert client.oldest_first
    assert [r.levelname for r in caplog.records if "falling back to timeStamp, which may not move when a "
            "completed sale is edited" in r.getMessage()] == ["WARNING"]


def test_the_sale_count_is_estimated_on_timestamp_where_the_filter_is_refused_and_the_reading_is_kept():
    lightspeed = _Lightspeed({"updatetime", "updateTime"}, ["10:30", "11:00"])
    client = lightspeed.client()

    assert client.count_sales(SINCE, UNTIL) == 2

    assert lightspeed.asked[-1]["timeStamp"] == "><,2026-03-01T10:00:00+00:00,2026-03-01T12:00:00+00:00"
    asked = len(lightspeed.asked)
    assert _read(client) == ["2", "1"]
    assert lightspeed.asked[asked]["sort"] == "-updatetime"  # not refused twice in one run


def test_a_refusal_past_the_first_page_fails_the_run_rather_than_reading_another_way():
    lightspeed = _Lightspeed(set(), ["10:30", "10:40", "11:00"])
    lightspeed.refused = {"after"}

    with pytest.raises(RunFailed, match="Lightspeed refused the Sale query"):
        _read(lightspeed.client())
    assert len(lightspeed.asked) == 2
