"""`lspos-sync backfill --bulk`: the same records as the Composite path, through Bulk API 2.0 ingest jobs."""

from __future__ import annotations

import pytest

from conftest import sell


@pytest.mark.parametrize("value", ["lots", "-5", "2e4"])
def test_a_bad_bulk_threshold_is_a_configuration_error_in_one_line(cli, value):
    result = cli("backfill", "--from", "2026-01-01", "--json", env={"LSPOS_BULK_THRESHOLD": value})
    assert result.code == 2
    assert "LSPOS_BULK_THRESHOLD" in result.json["error"] and "\n" not in result.json["error"]


def test_the_sale_count_is_one_lightspeed_request(lightspeed, boutique, tmp_path):
    import httpx

    from lspos_sync.lightspeed.auth import LightspeedAuth
    from lspos_sync.lightspeed.client import LightspeedClient
    from lspos_sync.state import StateStore

    for _ in range(3):
        sell(lightspeed, boutique)
    sell(lightspeed, boutique, completed=False)
    env = lightspeed.env()
    with StateStore(tmp_path / "state.db") as store, httpx.Client() as http:
        auth = LightspeedAuth(http, store, env["LIGHTSPEED_ACCOUNT_ID"], env["LIGHTSPEED_TOKEN_URL"],
                              env["LIGHTSPEED_CLIENT_ID"], env["LIGHTSPEED_CLIENT_SECRET"],
                              env["LIGHTSPEED_REFRESH_TOKEN"], "LIGHTSPEED_REFRESH_TOKEN")
        client = LightspeedClient(http, env["LIGHTSPEED_API_URL"], env["LIGHTSPEED_ACCOUNT_ID"], auth)
        now = client.now()
        before = lightspeed.request_count("Sale.json")
        assert client.count_sales(now.replace(year=now.year - 1), now) == 3
        assert lightspeed.request_count("Sale.json") - before == 1
