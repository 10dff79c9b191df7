"""The certificate variables (contract §2): either one points both APIs at a CA, though httpx reads only
SSL_CERT_FILE and requests only REQUESTS_CA_BUNDLE; set in the environment or only in the .env file."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from conftest import Cli, sell
from lspos_sync import certificates
from lspos_sync.config import read_environment
from lspos_sync.emulators.lightspeed import LightspeedEmulator

VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


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


@pytest.mark.parametrize("env_file", [
    "SSL_CERT_FILE={lightspeed}\nREQUESTS_CA_BUNDLE={salesforce}\n",  # each client its own
    "SSL_CERT_FILE={both}\n",  # one variable for both
    "REQUESTS_CA_BUNDLE={both}\n",
])
def test_certificate_variables_only_in_the_env_file_reach_both_apis(env_file, salesforce, tmp_path, monkeypatch):
    """§2: the configuration is read from the environment, a .env file filling in what it lacks, and the
    certificate variables point both APIs at emulators over HTTPS: here each emulator has its own CA."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with LightspeedEmulator(tls_dir=tmp_path / "tls-lightspeed") as lightspeed:
        shop = lightspeed.add_shop("Rue Cler", "Europe/Paris")
        lightspeed.add_sale(shop, [{"item_id": lightspeed.add_item("Silk scarf"), "quantity": 1,
                                    "unit_price": "120.00", "tax1": "0"}])
        both = tmp_path / "both-cas.pem"
        both.write_text(lightspeed.ca_bundle.read_text() + salesforce.ca_bundle.read_text())
        workdir = tmp_path / "work"
        workdir.mkdir()
        (workdir / ".env").write_text(env_file.format(lightspeed=lightspeed.ca_bundle,
                                                      salesforce=salesforce.ca_bundle, both=both))
        configuration = {name: value for name, value in {**lightspeed.env(), **salesforce.env()}.items()
                         if name not in VARIABLES}
        cli = Cli({**configuration, "LSPOS_STATE_PATH": str(tmp_path / "state.db"),
                   "LSPOS_SYNC_START": (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()}, workdir)

        result = cli("sync")

    assert result.code == 0, result.stderr
    assert len(salesforce.records("Sales_Transaction__c")) == 1


def test_a_certificate_variable_in_the_environment_wins_over_the_env_file(tmp_path, monkeypatch):
    for name in VARIABLES:
        monkeypatch.setenv(name, "")  # unset, and restored after the test
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "environment.pem"))
    env_file = tmp_path / "lspos.env"
    env_file.write_text(f"SSL_CERT_FILE={tmp_path / 'file.pem'}\nREQUESTS_CA_BUNDLE={tmp_path / 'file.pem'}\n")

    certificates.adopt(read_environment(env_file))

    assert os.environ["SSL_CERT_FILE"] == str(tmp_path / "environment.pem")
    assert os.environ["REQUESTS_CA_BUNDLE"] == str(tmp_path / "file.pem")  # what the environment lacked
