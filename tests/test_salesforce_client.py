"""The Salesforce client goes through simple-salesforce: one `Salesforce` per run carries every call, its
SalesforceLogin logs in wherever it reaches the token endpoint, and a run with nothing to write never imports it.

The client is pointed at the emulator only by what simple-salesforce itself takes: an instance URL and a
`requests` session (trusting the emulator's CA, and for the salesforce.com hosts a transport adapter that
carries their requests to the emulator on loopback)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce

from lspos_sync.config import SalesforceSettings
from lspos_sync.emulators.salesforce import SalesforceEmulator
from lspos_sync.errors import QueryTooHeavy, RunFailed, SalesforceAuthError
from lspos_sync.salesforce.client import SalesforceClient
from lspos_sync.salesforce.session import SalesforceSession
from lspos_sync.salesforce.writer import CompositeWriter
from lspos_sync.writing import TRANSACTIONS, Write
from conftest import sell

MY_DOMAIN = "https://acme.my.salesforce.com"
UPSERT_SALES = "/services/data/v62.0/composite/sobjects/Sales_Transaction__c/LS_Sale_ID__c"


class ToEmulator(HTTPAdapter):
    """A transport adapter that sends a host's requests to the emulator instead, and remembers what was asked."""

    def __init__(self, emulator: SalesforceEmulator) -> None:
        super().__init__()
        self.netloc = urlsplit(emulator.instance_url).netloc
        self.urls: list[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs):  # type: ignore[override]
        self.urls.append(str(request.url))
        request.url = urlunsplit(urlsplit(str(request.url))._replace(netloc=self.netloc))
        return super().send(request, **kwargs)


def settings(**values: str) -> SalesforceSettings:
    fields = dict.fromkeys(("instance_url", "access_token", "username", "consumer_key", "private_key_file",
                            "client_id", "client_secret", "password", "security_token"))
    return SalesforceSettings(**{**fields, "domain": "login", "api_version": "62.0", **values})  # type: ignore


@pytest.fixture
def session(salesforce: SalesforceEmulator, monkeypatch: pytest.MonkeyPatch) -> SalesforceSession:
    # requests lets REQUESTS_CA_BUNDLE override session.verify, so the environment must name the emulator's CA too
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(salesforce.ca_bundle))
    http = SalesforceSession()
    http.verify = str(salesforce.ca_bundle)
    return http


def sale(key: str) -> dict:
    return {"attributes": {"type": "Sales_Transaction__c"}, "LS_Sale_ID__c": key}


def upsert(client: SalesforceClient, *keys: str) -> list[dict]:
    return client.composite([{"method": "PATCH", "url": UPSERT_SALES, "referenceId": "sales",
                              "body": {"allOrNone": False, "records": [sale(k) for k in keys]}}])


def test_a_composite_goes_through_simple_salesforce_on_the_given_session(salesforce, session):
    client = SalesforceClient(settings(instance_url=salesforce.instance_url, access_token=salesforce.access_token),
                              http=session)
    [result] = upsert(client, "1-1", "1-2")
    assert result["httpStatusCode"] == 200 and all(r["success"] for r in result["body"])
    assert isinstance(client.sf, Salesforce) and client.sf.session is session
    # simple-salesforce read the usage from the answer's Sforce-Limit-Info: the call went through it
    assert client.sf.api_usage["api-usage"].used == salesforce.api_calls == client.api_calls == 1
    [request] = salesforce.requests
    assert (request.method, request.path) == ("POST", "/services/data/v62.0/composite")
    assert sorted(r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")) == ["1-1", "1-2"]


def test_a_query_too_complicated_is_told_apart_from_other_refusals_after_the_writes_sent_with_it(salesforce, session):
    client = SalesforceClient(settings(instance_url=salesforce.instance_url, access_token=salesforce.access_token),
                              http=session)
    writer = CompositeWriter(client)
    write = Write(TRANSACTIONS, sale("3-1"), ("3-1",))
    writer.write([write])  # held back: it travels with the query
    salesforce.max_query_conditions = 1
    too_complicated = "SELECT Id FROM Sales_Transaction__c WHERE LS_Sale_ID__c IN ('3-1','3-2')"

    with pytest.raises(QueryTooHeavy, match="QUERY_TOO_COMPLICATED"):
        writer.queries([too_complicated], optional=frozenset({0}))  # optional: still not taken for "no LIKE"

    assert write.answered and write.error is None
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == ["3-1"]
    with pytest.raises(QueryTooHeavy):
        client.queries([too_complicated], optional=frozenset({0}))
    assert client.queries(["SELECT Nope__c FROM Sales_Transaction__c"],
                          optional=frozenset({0})) == [None]  # another refusal of an optional query


def test_soql_describes_and_limits_go_through_the_same_salesforce(salesforce, session):
    client = SalesforceClient(settings(instance_url=salesforce.instance_url, access_token=salesforce.access_token),
                              http=session)
    client.ensure_allowance()  # the first check reads /limits
    sf = client.sf
    upsert(client, "2-1")
    assert [row["LS_Sale_ID__c"] for row in client.query("SELECT LS_Sale_ID__c FROM Sales_Transaction__c")] == ["2-1"]
    assert client.describe(["Account", "No_Such_Object__c"])["No_Such_Object__c"] is None
    assert client.sf is sf
    paths = [r.path.split("?")[0] for r in salesforce.requests]
    assert paths == ["/services/data/v62.0/limits/", "/services/data/v62.0/composite", "/services/data/v62.0/query/",
                     "/services/data/v62.0/composite"]
    assert client.api_calls == salesforce.api_calls == 4


def test_an_expired_session_is_renewed_on_the_same_salesforce(salesforce, session):
    client = SalesforceClient(settings(instance_url=salesforce.instance_url, client_id=salesforce.consumer_key,
                                       client_secret=salesforce.consumer_secret), http=session)
    upsert(client, "3-1")
    sf, first_token = client.sf, client.sf.session_id
    salesforce.expire_sessions()
    upsert(client, "3-2")
    assert client.sf is sf and sf.session_id != first_token
    assert sf.headers["Authorization"] == f"Bearer {sf.session_id}"
    logins = [r for r in salesforce.requests if r.path == "/services/oauth2/token"]
    assert len(logins) == 2
    assert len(salesforce.records("Sales_Transaction__c")) == 2


def test_a_bare_access_token_that_expired_is_not_renewed(salesforce, session):
    client = SalesforceClient(settings(instance_url=salesforce.instance_url, access_token=salesforce.access_token),
                              http=session)
    salesforce.expire_sessions()
    with pytest.raises(SalesforceAuthError, match="SALESFORCE_ACCESS_TOKEN"):
        upsert(client, "4-1")


def test_the_token_endpoint_of_an_instance_url_outside_salesforce_com_is_posted_to_by_the_client(salesforce, session):
    client = SalesforceClient(settings(instance_url=salesforce.instance_url, client_id=salesforce.consumer_key,
                                       client_secret=salesforce.consumer_secret), http=session)
    upsert(client, "5-1")
    login = salesforce.requests[0]
    assert (login.method, login.path) == ("POST", "/services/oauth2/token")
    assert login.body["client_id"] == salesforce.consumer_key  # the form of our own post; SalesforceLogin uses Basic
    assert client.sf.base_url == f"{salesforce.instance_url}/services/data/v62.0/"


def _key_pair(tmp_path: Path) -> tuple[Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "server.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return key_file, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("flow", ["jwt", "client_credentials", "password"])
def test_a_my_domain_is_logged_in_to_by_simple_salesforce(tmp_path, monkeypatch, flow):
    key_file, public_key = _key_pair(tmp_path)
    with SalesforceEmulator(tmp_path / "tls", jwt_public_key_pem=public_key) as salesforce:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(salesforce.ca_bundle))
        http = SalesforceSession()
        my_domain = ToEmulator(salesforce)
        http.mount(MY_DOMAIN, my_domain)
        credentials = {
            "jwt": {"username": salesforce.username, "consumer_key": salesforce.consumer_key,
                    "private_key_file": str(key_file)},
            "client_credentials": {"client_id": salesforce.consumer_key, "client_secret": salesforce.consumer_secret},
            "password": {"username": salesforce.username, "password": salesforce.password,
                         "security_token": salesforce.security_token},
        }[flow]
        client = SalesforceClient(settings(instance_url=MY_DOMAIN, **credentials), http=http)
        upsert(client, "6-1")
        login = {"jwt": "/services/oauth2/token", "client_credentials": "/services/oauth2/token",
                 "password": "/services/Soap/u/62.0"}[flow]
        assert my_domain.urls == [MY_DOMAIN + login]  # the login URL simple-salesforce built; then the instance's
        if flow == "client_credentials":
            assert "client_id" not in salesforce.requests[0].body  # SalesforceLogin sends the client by Basic auth
        assert client.sf.base_url == f"{salesforce.instance_url}/services/data/v62.0/"
        assert len(salesforce.records("Sales_Transaction__c")) == 1


def test_a_refused_my_domain_login_names_the_variables(tmp_path, monkeypatch, salesforce):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(salesforce.ca_bundle))
    http = SalesforceSession()
    http.mount(MY_DOMAIN, ToEmulator(salesforce))
    client = SalesforceClient(settings(instance_url=MY_DOMAIN, client_id=salesforce.consumer_key,
                                       client_secret="wrong"), http=http)
    with pytest.raises(SalesforceAuthError, match="client credentials login .*SALESFORCE_CLIENT_SECRET"):
        upsert(client, "7-1")


def _imported(stderr: str) -> set[str]:
    """The modules a `-X importtime` log names."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_simple_salesforce_and_pydantic_are_imported_only_by_a_run_that_has_sales(cli, lightspeed, boutique):
    importtime = {"PYTHONPROFILEIMPORTTIME": "1"}
    idle = cli("sync", env=importtime)
    assert idle.code == 0, idle.stderr
    assert "lspos_sync.cli" in _imported(idle.stderr)  # the import log was written
    writing_only = {"simple_salesforce", "zeep", "pydantic", "pydantic_core", "lspos_sync.lightspeed.models"}
    assert not writing_only & _imported(idle.stderr)
    sell(lightspeed, boutique)
    writing = cli("sync", env=importtime)
    assert writing.code == 0, writing.stderr
    assert {"simple_salesforce", "pydantic", "lspos_sync.lightspeed.models"} <= _imported(writing.stderr)


def test_an_unapproved_jwt_user_gets_one_line_and_no_warning(tmp_path, monkeypatch, recwarn):
    key_file, public_key = _key_pair(tmp_path)
    with SalesforceEmulator(tmp_path / "tls", jwt_public_key_pem=public_key) as salesforce:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(salesforce.ca_bundle))
        http = SalesforceSession()
        http.mount(MY_DOMAIN, ToEmulator(salesforce))
        client = SalesforceClient(settings(instance_url=MY_DOMAIN, username="someone.else@example.com",
                                           consumer_key=salesforce.consumer_key, private_key_file=str(key_file)),
                                  http=http)
        with pytest.raises(SalesforceAuthError, match="JWT bearer login \\(user hasn't approved this consumer\\)"):
            upsert(client, "8-1")
        assert [str(w.message) for w in recwarn] == []


def test_full_requests_go_from_the_writers_thread_and_a_failure_there_comes_out_of_the_next_call(salesforce, session):
    client = SalesforceClient(settings(instance_url=salesforce.instance_url, access_token=salesforce.access_token),
                              http=session)
    writer = CompositeWriter(client, pause=0)
    first = [Write(TRANSACTIONS, sale(f"5-{i}"), (f"5-{i}",)) for i in range(2000)]  # 10 collections
    writer.write(first)  # five go from the writer's thread, five are held for what comes next
    writer.flush()
    assert all(w.answered and not w.error for w in first)
    assert len(salesforce.records("Sales_Transaction__c")) == 2000
    assert sum(r.path.endswith("/composite") for r in salesforce.requests) == 2

    salesforce.fail_next(100, status=503)  # down: the thread's request fails after its retries
    second = [Write(TRANSACTIONS, sale(f"6-{i}"), (f"6-{i}",)) for i in range(2000)]
    writer.write(second)
    with pytest.raises(RunFailed):
        writer.flush()
    assert not any(w.answered for w in second[:1000])  # the thread's request: never answered, so never settled
    salesforce.clear_faults()
    writer.flush()  # what was held goes once Salesforce is back; the failure was reported once
    assert all(w.answered for w in second[1000:])
