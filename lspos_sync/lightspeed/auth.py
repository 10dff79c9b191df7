"""Lightspeed OAuth: the refresh-token grant with rotating tokens, persisted before first use."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import httpx

from lspos_sync.config import fingerprint
from lspos_sync.errors import ConfigError, LightspeedAuthError, RunFailed
from lspos_sync.state import StateStore, Tokens

log = logging.getLogger(__name__)

# A token is used until a little before its stated expiry (2 minutes, or a quarter of a short lifetime)
# so that no request carries a token that dies in flight. What is stored is that "use until" time.
_EXPIRY_MARGIN = 120
_REFRESH_ATTEMPTS = 4  # Lightspeed allows 5 refresh attempts a minute per connection (fact sheet §7)
_LONGEST_TOKEN_WAIT = 60.0  # a 429's Retry-After waited out up to this; a longer one fails the run for the next
UNUSED_TOKEN_LIFETIME = timedelta(days=30)  # fact sheet §7: "unused refresh tokens expire after 30 days"


class LightspeedAuth:
    """Hands out a valid access token, refreshing only when the stored one is (nearly) expired.

    Each refresh returns a new refresh token and revokes the old one once the new access token is
    first used (fact sheet §7, 2026-01-15). So the new pair is stored, in one transaction, before the
    access token is ever sent: a crash at any point leaves a refresh token that still works.

    Once an account has a stored chain, it wins over the variable (contract §2). The variable starts a new chain
    only when Lightspeed revokes the stored one and the variable no longer holds the token that chain started from.
    """

    def __init__(self, http: httpx.Client, store: StateStore, account_id: str, token_url: str,
                 client_id: str, client_secret: str, initial_refresh_token: str | None,
                 variable: str = "LIGHTSPEED_REFRESH_TOKEN") -> None:
        self._http = http
        self._variable = variable  # where the user sets the refresh token, for the messages
        self._store = store
        self._account_id = account_id
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._initial = initial_refresh_token
        self.refreshes = 0

    def access_token(self) -> str:
        tokens = self._current()
        if tokens.access_token and tokens.expires_at and tokens.expires_at > datetime.now(timezone.utc):
            return tokens.access_token
        return self.refresh(rejected=None)

    def refresh(self, rejected: str | None) -> str:
        """A new access token. `rejected` is the access token the API just refused, if any: when another
        process has already replaced it, its replacement is used instead of refreshing again."""
        with self._store.token_lock():
            tokens = self._current()
            fresh = (tokens.access_token and tokens.access_token != rejected and tokens.expires_at
                     and tokens.expires_at > datetime.now(timezone.utc))
            if fresh:
                return tokens.access_token  # type: ignore[return-value]
            try:
                granted = self._grant(tokens.refresh_token)
            except LightspeedAuthError as refused:
                tokens = self._new_chain(tokens, refused)
                granted = self._grant(tokens.refresh_token)
            expires_in = int(granted.get("expires_in") or 1800)
            use_for = expires_in - min(_EXPIRY_MARGIN, expires_in // 4)
            new = Tokens(
                refresh_token=granted.get("refresh_token") or tokens.refresh_token,
                access_token=granted["access_token"],
                expires_at=datetime.now(timezone.utc) + timedelta(seconds=use_for),
                seed=tokens.seed,
            )
            self._store.save_tokens(self._account_id, new)
            self.refreshes += 1
            return granted["access_token"]

    def _current(self) -> Tokens:
        """The stored chain, whatever the variable holds now (contract §2); without one, the variable's token."""
        stored = self._store.tokens(self._account_id)
        if stored is not None:
            return stored
        if not self._initial:
            raise ConfigError(
                f"missing configuration: {self._variable} (the refresh token from authorising the app"
                f"{' for account ' + self._account_id if self._variable != 'LIGHTSPEED_REFRESH_TOKEN' else ''})")
        return Tokens(self._initial, None, None, fingerprint(self._initial))

    def _new_chain(self, refused_chain: Tokens, refusal: LightspeedAuthError) -> Tokens:
        """The start of a new chain from the variable, when Lightspeed revoked the stored chain (invalid_grant)
        and the variable no longer holds the token that chain started from: the app was re-authorised.
        Otherwise the refusal stands."""
        if refusal.oauth_error != "invalid_grant":
            raise refusal
        seed = fingerprint(self._initial) if self._initial else None
        if seed is None or seed == refused_chain.seed:
            raise _unused_for_long(refusal, refused_chain.refreshed_at)
        log.warning("Lightspeed account %s refused the stored refresh token and %s no longer holds the token that "
                    "chain started from: the app was re-authorised, starting a new chain from the variable",
                    self._account_id, self._variable)
        return Tokens(self._initial, None, None, seed)

    def _grant(self, refresh_token: str) -> dict:
        # Form-encoded, no scope: a JSON body with a scope is refused with invalid_grant (fact sheet §7).
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                "client_id": self._client_id, "client_secret": self._client_secret}
        for attempt in range(_REFRESH_ATTEMPTS):
            try:
                response = self._http.post(self._token_url, data=form, headers={"Accept": "application/json"})
            except httpx.TransportError as error:
                # Safe to retry: the old refresh token is only revoked once the new access token is used.
                if attempt + 1 == _REFRESH_ATTEMPTS:
                    raise RunFailed(f"Lightspeed token endpoint unreachable: {type(error).__name__}") from None
                time.sleep(2 ** attempt)
                continue
            if response.status_code >= 500 and attempt + 1 < _REFRESH_ATTEMPTS:
                time.sleep(2 ** attempt)
                continue
            if response.status_code == 429:
                # Too many refreshes of this connection (fact sheet §7): refused, not executed, so the stored
                # token still works; waited out when Lightspeed says how long, as a Sale page's 429 is.
                wait = _seconds(response.headers.get("retry-after"))
                if wait is None or wait > _LONGEST_TOKEN_WAIT or attempt + 1 == _REFRESH_ATTEMPTS:
                    raise RunFailed("Lightspeed token endpoint refused the refresh as too frequent (HTTP 429"
                                    + (f", Retry-After {wait:g} s" if wait is not None else "")
                                    + "): the stored token still works, and the next run refreshes again")
                log.info("Lightspeed token endpoint: too many refreshes (429); waiting %.0f s", wait)
                time.sleep(wait)
                continue
            if response.status_code in (400, 401, 403):
                error = _oauth_error(response)
                if error == "invalid_client":  # the client's id or secret (RFC 6749 §5.2), not the token
                    names = [self._variable.replace("REFRESH_TOKEN", name) for name in ("CLIENT_ID", "CLIENT_SECRET")]
                    raise LightspeedAuthError(
                        f"Lightspeed refused the API client (HTTP {response.status_code} invalid_client): check "
                        f"{names[0]} and {names[1]}", error)
                raise LightspeedAuthError(
                    f"Lightspeed refused the refresh token (HTTP {response.status_code} {error}): "
                    f"re-authorise the app in Lightspeed and set {self._variable} to the new token", error)
            if response.status_code != 200:
                raise RunFailed(f"Lightspeed token endpoint answered HTTP {response.status_code}")
            try:
                body = response.json()
            except ValueError:
                # Cut off on its way: a new pair was minted and lost, as with a dropped answer, and as safe to retry.
                if attempt + 1 == _REFRESH_ATTEMPTS:
                    raise RunFailed("Lightspeed token endpoint kept answering unreadable JSON") from None
                time.sleep(2 ** attempt)
                continue
            if not isinstance(body, dict) or not body.get("access_token"):
                raise RunFailed("Lightspeed token endpoint answered without an access token")
            return body
        raise RunFailed("Lightspeed token refresh failed")


def _seconds(value: str | None) -> float | None:
    """A Retry-After in seconds (the HTTP-date form is not used by Lightspeed)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _unused_for_long(refusal: LightspeedAuthError, refreshed_at: datetime | None) -> LightspeedAuthError:
    """The refusal, saying when the stored token was last refreshed if that is longer ago than Lightspeed keeps an
    unused refresh token (fact sheet §7: 30 days): the likely cause, a tool that did not run for that long."""
    if refreshed_at is None or datetime.now(timezone.utc) - refreshed_at <= UNUSED_TOKEN_LIFETIME:
        return refusal
    return LightspeedAuthError(f"{refusal} (the stored token was last refreshed on {refreshed_at:%Y-%m-%d}, more "
                               f"than {UNUSED_TOKEN_LIFETIME.days} days ago: Lightspeed expires a refresh token "
                               "unused for that long)", refusal.oauth_error)


def _oauth_error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))
    except ValueError:
        return ""
