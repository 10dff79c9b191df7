"""Authentication on both sides: rotating Lightspeed tokens kept in the state store, the four Salesforce
options of contract §2, and secrets that never show."""

from __future__ import annotations

import sqlite3
import stat
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import Cli, sell
from lspos_sync.config import fingerprint
from lspos_sync.emulators.lightspeed import LightspeedEmulator
from lspos_sync.emulators.salesforce import SalesforceEmulator
from lspos_sync.state import StateStore


def test_access_token_is_reused_across_runs_until_it_expires(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    for _ in range(3):
        assert cli("sync").code == 0
    assert lightspeed.refresh_count == 1  # a run every ten minutes must not refresh every time


def test_rotated_refresh_token_is_kept_and_wins_over_the_variable(tmp_path, salesforce, state_path):
    with LightspeedEmulator(access_token_ttl=1) as lightspeed:  # every run outlives its token: each one refreshes
        cli = Cli({**lightspeed.env(), **salesforce.env(), "LSPOS_STATE_PATH": str(state_path),
                   "LSPOS_SYNC_START": "2026-01-01"}, tmp_path)
        for _ in range(3):
            time.sleep(1.1)
            result = cli("sync")
            assert result.code == 0, result.stderr
        assert lightspeed.refresh_count >= 3
        assert lightspeed.current_refresh_token != lightspeed.initial_refresh_token


def _chain_seed(state_path, account_id: str = "182255") -> str:
    """Which refresh token the stored chain started from, as the store records it (a fingerprint)."""
    with StateStore(state_path) as store:
        return store.tokens(account_id).seed


@pytest.mark.parametrize("variable", ["stale", "re-authorised"])
def test_stored_refresh_token_wins_over_a_changed_variable(cli, lightspeed, salesforce, state_path, variable):
    assert cli("sync").code == 0  # the chain is stored, and its first token rotated away
    token = "ls-refresh-long-gone" if variable == "stale" else lightspeed.reauthorise()
    lightspeed.expire_access_tokens()

    result = cli("sync", env={"LIGHTSPEED_REFRESH_TOKEN": token})

    assert result.code == 0, result.stderr
    assert lightspeed.refresh_count == 2 and lightspeed.request_count("/auth/oauth/token", status=400) == 0
    assert _chain_seed(state_path) == fingerprint(lightspeed.initial_refresh_token)  # the same chain, refreshed
    assert "new chain" not in result.stderr


def test_after_reauthorising_the_new_token_in_the_variable_starts_a_new_chain(cli, lightspeed, salesforce,
                                                                              state_path, boutique):
    assert cli("sync").code == 0
    lightspeed.revoke_all_tokens()  # the merchant disconnected the app ...
    reauthorised = lightspeed.reauthorise()  # ... and authorised it again; the operator sets the new token
    sell(lightspeed, boutique)

    result = cli("sync", env={"LIGHTSPEED_REFRESH_TOKEN": reauthorised})

    assert result.code == 0, result.stderr
    assert "starting a new chain" in result.stderr and "LIGHTSPEED_REFRESH_TOKEN" in result.stderr
    assert reauthorised not in result.stderr
    assert len(salesforce.records("Sales_Transaction__c")) == 1
    assert _chain_seed(state_path) == fingerprint(reauthorised)
    lightspeed.expire_access_tokens()
    again = cli("sync", env={"LIGHTSPEED_REFRESH_TOKEN": reauthorised})  # the new chain is stored: no new start
    assert again.code == 0 and "new chain" not in again.stderr
    assert lightspeed.request_count("/auth/oauth/token", status=400) == 1  # only the revoked chain was refused


def test_revoked_chain_with_an_unchanged_variable_exits_1_naming_the_variable(cli, lightspeed, salesforce):
    assert cli("sync").code == 0
    lightspeed.revoke_all_tokens()

    result = cli("sync")

    assert result.code == 1
    assert "re-authorise" in result.stderr and "LIGHTSPEED_REFRESH_TOKEN" in result.stderr
    assert "new chain" not in result.stderr
    assert lightspeed.request_count("/auth/oauth/token", status=400) == 1  # the variable's spent token is not tried


def test_revoked_refresh_token_exits_1_asking_to_reauthorise(cli, lightspeed, salesforce):
    lightspeed.revoke_all_tokens()
    result = cli("sync")
    assert result.code == 1
    assert "re-authorise" in result.stderr and "LIGHTSPEED_REFRESH_TOKEN" in result.stderr


def test_an_access_token_refused_right_after_its_refresh_asks_to_reauthorise(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    # what an employee locked or the app disconnected looks like from here: every token refused, even a new one
    lightspeed.fail_next(count=2, status=401, path_suffix="Sale.json", message="Access token could not be verified")

    result = cli("sync")

    assert result.code == 1 and result.stderr.count("\n") == 1
    assert lightspeed.refresh_count == 2  # the run's first token, then one more after the 401
    assert "refused a freshly refreshed access token" in result.stderr and "re-authorise the app" in result.stderr


def test_a_client_secret_lightspeed_refuses_names_the_client_variables_not_reauthorising(cli, lightspeed, salesforce):
    result = cli("sync", env={"LIGHTSPEED_CLIENT_SECRET": "rotated-in-the-developer-portal"})

    assert result.code == 1
    assert lightspeed.request_count("/auth/oauth/token", status=401) == 1  # invalid_client (RFC 6749 §5.2)
    assert "LIGHTSPEED_CLIENT_ID" in result.stderr and "LIGHTSPEED_CLIENT_SECRET" in result.stderr
    assert "re-authorise" not in result.stderr and result.stderr.count("\n") == 1


def test_a_refresh_refused_as_too_frequent_is_waited_out_as_lightspeed_says(cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique)
    lightspeed.fail_next(status=429, path_suffix="/auth/oauth/token", retry_after=1)

    result = cli("sync", "--json")

    assert result.code == 0, result.stderr
    assert lightspeed.request_count("/auth/oauth/token", status=429) == 1 and lightspeed.refresh_count == 1
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]


def test_a_refresh_refused_as_too_frequent_for_long_fails_the_run_in_one_line_and_the_next_run_refreshes(
        cli, lightspeed, salesforce, boutique):
    sale = sell(lightspeed, boutique)
    lightspeed.fail_next(status=429, path_suffix="/auth/oauth/token", retry_after=3600)

    refused = cli("sync")
    again = cli("sync")

    assert refused.code == 1 and refused.stderr.count("\n") == 1
    assert "refused the refresh as too frequent (HTTP 429, Retry-After 3600 s)" in refused.stderr
    assert again.code == 0, again.stderr  # the stored refresh token was never spent
    assert [r["LS_Sale_ID__c"] for r in salesforce.records("Sales_Transaction__c")] == [f"182255-{sale}"]


def _salesforce_cli(tmp_path, lightspeed, salesforce, state_path, **variables) -> Cli:
    env = {**lightspeed.env(), "LSPOS_STATE_PATH": str(state_path), "LSPOS_SYNC_START": "2026-01-01",
           "SALESFORCE_INSTANCE_URL": salesforce.instance_url, "SSL_CERT_FILE": str(salesforce.ca_bundle),
           "REQUESTS_CA_BUNDLE": str(salesforce.ca_bundle), **variables}
    return Cli(env, tmp_path)


def test_client_credentials_login_and_session_renewal(tmp_path, lightspeed, salesforce, state_path, boutique):
    sell(lightspeed, boutique)
    cli = _salesforce_cli(tmp_path, lightspeed, salesforce, state_path, SALESFORCE_CLIENT_ID="sf-consumer-key",
                          SALESFORCE_CLIENT_SECRET="sf-consumer-secret")
    assert cli("sync").code == 0
    salesforce.expire_sessions()
    sell(lightspeed, boutique)
    result = cli("sync")
    assert result.code == 0, result.stderr
    assert len(salesforce.records("Sales_Transaction__c")) == 2


def test_jwt_bearer_login(tmp_path, lightspeed, state_path, boutique):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "server.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with SalesforceEmulator(tmp_path / "tls", jwt_public_key_pem=public) as salesforce:
        sell(lightspeed, boutique)
        cli = _salesforce_cli(tmp_path, lightspeed, salesforce, state_path, SALESFORCE_USERNAME="integration@example.com",
                              SALESFORCE_CONSUMER_KEY="sf-consumer-key", SALESFORCE_PRIVATE_KEY_FILE=str(key_file))
        result = cli("sync")
        assert result.code == 0, result.stderr
        assert len(salesforce.records("Sales_Transaction__c")) == 1


def test_username_password_login(tmp_path, lightspeed, salesforce, state_path, boutique):
    sell(lightspeed, boutique)
    cli = _salesforce_cli(tmp_path, lightspeed, salesforce, state_path, SALESFORCE_USERNAME="integration@example.com",
                          SALESFORCE_PASSWORD="sf-password", SALESFORCE_SECURITY_TOKEN="sf-security-token")
    result = cli("sync")
    assert result.code == 0, result.stderr
    sell(lightspeed, boutique)  # a run with nothing to write never logs in to Salesforce
    bad = cli("sync", env={"SALESFORCE_PASSWORD": "wrong"})
    assert bad.code == 1 and "SALESFORCE_PASSWORD" in bad.stderr


def test_username_password_login_at_an_api_version_without_soap_login_logs_in_at_the_last_one_with_it(
        tmp_path, lightspeed, salesforce, state_path, boutique):
    salesforce.api_version = "66.0"
    sell(lightspeed, boutique)
    cli = _salesforce_cli(tmp_path, lightspeed, salesforce, state_path, SALESFORCE_USERNAME="integration@example.com",
                          SALESFORCE_PASSWORD="sf-password", SALESFORCE_SECURITY_TOKEN="sf-security-token",
                          SALESFORCE_API_VERSION="66.0")
    result = cli("sync")
    assert result.code == 0, result.stderr
    assert [r.path for r in salesforce.requests if "/Soap/u/" in r.path] == ["/services/Soap/u/64.0"]
    assert any(r.path.startswith("/services/data/v66.0/") for r in salesforce.requests)


def test_an_org_without_soap_login_is_told_apart_from_wrong_credentials(tmp_path, lightspeed, salesforce,
                                                                        state_path, boutique):
    salesforce.soap_login_enabled = False  # an org created in Winter '26 or later (fact sheet §0)
    sell(lightspeed, boutique)
    cli = _salesforce_cli(tmp_path, lightspeed, salesforce, state_path, SALESFORCE_USERNAME="integration@example.com",
                          SALESFORCE_PASSWORD="sf-password", SALESFORCE_SECURITY_TOKEN="sf-security-token")
    result = cli("sync")
    assert result.code == 1
    assert "does not offer the SOAP login()" in result.stderr and "JWT bearer" in result.stderr
    assert "check SALESFORCE_USERNAME" not in result.stderr


def test_expired_bare_access_token_exits_1_naming_the_variable(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique)
    salesforce.expire_sessions()
    result = cli("sync")
    assert result.code == 1
    assert "SALESFORCE_ACCESS_TOKEN" in result.stderr


def test_no_secret_appears_in_any_output_at_any_verbosity(cli, lightspeed, salesforce, boutique):
    sell(lightspeed, boutique, lightspeed.add_customer("Ana", "Lima", email="ana@example.com"))
    outputs = [cli("sync", "-vv"), cli("sync", "-vv", "--json"), cli("dry-run", "-vv", "--json"),
               cli("checkpoint", "show", "-vv")]
    lightspeed.revoke_all_tokens()
    outputs.append(cli("sync", "-vv", env={"LSPOS_LOOKBACK_MINUTES": "0"}))
    secrets = [cli.env[name] for name in ("LIGHTSPEED_CLIENT_SECRET", "LIGHTSPEED_REFRESH_TOKEN",
                                          "SALESFORCE_ACCESS_TOKEN")]
    assert lightspeed.issued  # and the tokens the runs were given, which no variable names
    secrets += lightspeed.issued
    captured = "\n".join(o.stdout + o.stderr for o in outputs)
    assert captured.strip()
    for secret in secrets:
        assert secret not in captured


def test_state_file_is_private_to_its_owner(cli, lightspeed, salesforce, boutique, state_path):
    assert cli("sync").code == 0
    assert stat.S_IMODE(state_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("variables, message", [
    ({"SALESFORCE_ACCESS_TOKEN": ""}, "no Salesforce credentials"),
    ({"SALESFORCE_INSTANCE_URL": ""}, "SALESFORCE_INSTANCE_URL"),
    ({"LSPOS_LOOKBACK_MINUTES": "half an hour"}, "LSPOS_LOOKBACK_MINUTES"),
    ({"LSPOS_SYNC_START": "March"}, "LSPOS_SYNC_START"),
    ({"SALESFORCE_API_VERSION": "45.0"}, "SALESFORCE_API_VERSION: 45.0 is older than 46.0"),
])
def test_bad_configuration_exits_2(cli, variables, message):
    result = cli("sync", env=variables)
    assert result.code == 2 and message in result.stderr


@contextmanager
def _months_apart(tmp_path, salesforce, state_path):
    """A Lightspeed whose clock the test moves on (days between runs), and the program run against it."""
    skipped = [timedelta(0)]
    with LightspeedEmulator(clock=lambda: datetime.now(timezone.utc) + skipped[0]) as lightspeed:
        workdir = tmp_path / "work"
        workdir.mkdir()
        yield lightspeed, Cli({**lightspeed.env(), **salesforce.env(), "LSPOS_STATE_PATH": str(state_path),
                               "LSPOS_SYNC_START": (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()},
                              workdir), skipped


def test_a_host_clock_set_back_sends_its_stored_access_token_once_then_refreshes(tmp_path, salesforce, state_path):
    # The access token's "use until" is on the host's clock: a host clock set back two hours (here: Lightspeed's
    # moved on) keeps a dead token looking alive. Lightspeed refuses it once; the run refreshes and goes on.
    with _months_apart(tmp_path, salesforce, state_path) as (lightspeed, cli, skipped):
        assert cli("sync").code == 0 and lightspeed.refresh_count == 1
        skipped[0] = timedelta(hours=2)

        result = cli("sync", "--json")

        assert result.code == 0, result.stderr
        assert lightspeed.refresh_count == 2 and lightspeed.request_count(status=401) == 1


def test_a_sync_not_run_for_thirty_days_exits_1_asking_to_reauthorise_and_keeps_its_checkpoint(tmp_path, salesforce,
                                                                                                state_path):
    # Lightspeed expires a refresh token unused for 30 days (fact sheet §7): a tool stopped that long, or run once a
    # month, cannot refresh; the operator re-authorises (docs/runbook.md) and nothing is lost.
    with _months_apart(tmp_path, salesforce, state_path) as (lightspeed, cli, skipped):
        assert cli("sync").code == 0
        checkpoint = cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"]
        skipped[0] = timedelta(days=31)  # a month on Lightspeed's clock, and on the host's since the last refresh:
        last = datetime.now(timezone.utc) - skipped[0]
        with sqlite3.connect(state_path) as db:
            db.execute("UPDATE token SET updated_at = ?", (last.isoformat(),))

        result = cli("sync")

        assert result.code == 1
        assert ("Lightspeed refused the refresh token (HTTP 400 invalid_grant): re-authorise the app in Lightspeed "
                "and set LIGHTSPEED_REFRESH_TOKEN to the new token (the stored token was last refreshed on "
                f"{last:%Y-%m-%d}, more than 30 days ago: Lightspeed expires a refresh token unused for that long)"
                ) in result.stderr
        assert cli("checkpoint", "show", "--json").json["checkpoints"]["182255"]["cursor"] == checkpoint
