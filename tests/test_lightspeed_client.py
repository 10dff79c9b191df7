"""The Lightspeed client reads every page the standard library's JSON reader would read, the same way."""

from __future__ import annotations

import gc
import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

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
