"""The Lightspeed client reads every page the standard library's JSON reader would read, the same way."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest

from lspos_sync.lightspeed.client import LightspeedClient
from lspos_sync.lightspeed.models import one_or_many


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
    assert list(_client(body).sales(since, since)) == [one_or_many(json.loads(body), "Sale")]
