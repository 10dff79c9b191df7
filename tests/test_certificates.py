"""The certificate variables (contract §2): either one points both APIs at a CA, though httpx reads only
SSL_CERT_FILE and requests only REQUESTS_CA_BUNDLE."""

from __future__ import annotations

import httpx
import pytest

from conftest import sell
from lspos_sync import certificates


def test_ssl_cert_file_alone_reaches_salesforce_too(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)

    result = cli("sync", env={"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": ""})  # SSL_CERT_FILE names the CA

    assert result.code == 0, result.stderr
    assert len(salesforce.records("Sales_Transaction__c")) == 1


def test_requests_ca_bundle_alone_reaches_an_httpx_client(salesforce, monkeypatch):
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(salesforce.ca_bundle))
    url = f"{salesforce.instance_url}/services/data/"

    with httpx.Client(verify=certificates.for_httpx()) as http:
        assert http.get(url).status_code == 200
    with httpx.Client() as http, pytest.raises(httpx.ConnectError):  # what httpx alone would do: certifi's CAs
        http.get(url)


def test_each_client_reads_its_own_variable_when_it_is_set(monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "httpx.pem"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "requests.pem"))
    assert certificates.for_httpx() is True and certificates.for_requests() is None
