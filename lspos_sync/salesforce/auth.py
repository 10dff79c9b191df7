"""Salesforce authentication: the four options of contract §2, each returning a session token.

The token endpoints are those of the org's My Domain (SALESFORCE_INSTANCE_URL) when it is set, else
`https://{SALESFORCE_DOMAIN}.salesforce.com`. simple-salesforce's SalesforceLogin sends the login wherever that
host has the form `https://<name>.salesforce.com` (login, test, a My Domain); it can only build that form, so a
SALESFORCE_INSTANCE_URL elsewhere (an emulator on loopback, a host outside salesforce.com) has its JWT bearer and
client credentials token posted here, and its username/password login sent by SalesforceLogin's `scratch_url`.
Every login goes through the run's requests session, the one the REST calls then use (salesforce/client.py).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lspos_sync.config import SalesforceSettings
from lspos_sync.errors import ConfigError, SalesforceAuthError

if TYPE_CHECKING:
    import requests


_ATTEMPTS = 3
# The last API version with the SOAP login() (fact sheet §0: gone from v65.0 on).
SOAP_LOGIN_VERSION = 64.0
_SALESFORCE_HOSTS = ".salesforce.com"


@dataclass(frozen=True)
class Session:
    access_token: str
    instance_url: str
    renewable: bool


def login_host(settings: SalesforceSettings) -> str:
    return settings.instance_url or f"https://{settings.domain}.salesforce.com"


def salesforce_domain(settings: SalesforceSettings) -> str | None:
    """The `domain` that makes simple-salesforce build the login host (`acme.my` for
    https://acme.my.salesforce.com), or None when the login host is not of that form."""
    parts = urlsplit(login_host(settings))
    host = parts.hostname or ""
    if (parts.scheme == "https" and parts.port in (None, 443) and parts.path.strip("/") == ""
            and host.endswith(_SALESFORCE_HOSTS)):
        return host.removesuffix(_SALESFORCE_HOSTS)
    return None


def authenticate(settings: SalesforceSettings, http: requests.Session) -> Session:
    flow = settings.auth_flow
    if flow == "access_token":
        if not settings.instance_url:
            raise ConfigError("SALESFORCE_INSTANCE_URL is required with SALESFORCE_ACCESS_TOKEN")
        return Session(settings.access_token or "", settings.instance_url, renewable=False)
    if flow == "jwt":
        return _jwt_bearer(settings, http)
    if flow == "client_credentials":
        return _client_credentials(settings, http)
    return _password(settings, http)


def _login(settings: SalesforceSettings, send: Callable[[], tuple[str, str]], what: str, variables: str,
           advice: dict[str, str] | None = None) -> Session:
    """A login by simple-salesforce, which answers (token, instance host), tried again on a dropped connection
    or a server error (a login changes nothing). A refusal says what to check: `variables`, or the `advice` for
    its code where one is given (a refusal that is not about the credentials)."""
    import requests
    from simple_salesforce.exceptions import SalesforceAuthenticationFailed

    for attempt in range(_ATTEMPTS):
        last = attempt + 1 == _ATTEMPTS
        try:
            with warnings.catch_warnings():  # its multi-line hint on an unapproved user: our one line says it
                warnings.simplefilter("ignore")
                token, instance = send()
        except requests.RequestException as error:
            if last:
                raise SalesforceAuthError(f"Salesforce login ({what}) failed: {type(error).__name__} reaching "
                                          f"{login_host(settings)}") from None
        except SalesforceAuthenticationFailed as error:
            # The code is the HTTP status only when the answer was neither JSON nor a SOAP fault.
            if last or not (isinstance(error.code, int) and error.code >= 500):
                detail = error.auth_message or error.code or "no reason given"
                hint = (advice or {}).get(str(error.code), f"check {variables}")
                raise SalesforceAuthError(f"Salesforce refused the {what} login ({detail}): {hint}") from None
        else:
            return Session(token, f"https://{instance}".rstrip("/"), renewable=True)
        time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def _post(http: requests.Session, url: str, what: str, form: dict[str, str]) -> requests.Response:
    """A token request of our own, tried again on a dropped connection or a server error."""
    import requests

    for attempt in range(_ATTEMPTS):
        try:
            response = http.post(url, data=form)
        except requests.RequestException as error:
            if attempt + 1 == _ATTEMPTS:
                raise SalesforceAuthError(f"Salesforce login ({what}) failed: {type(error).__name__} reaching {url}") \
                    from None
        else:
            if response.status_code < 500 or attempt + 1 == _ATTEMPTS:
                return response
        time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def _oauth_token(settings: SalesforceSettings, http: requests.Session, form: dict[str, str],
                 what: str, variables: str) -> Session:
    """The token post to SALESFORCE_INSTANCE_URL, where simple-salesforce cannot send it."""
    url = f"{login_host(settings)}/services/oauth2/token"
    response = _post(http, url, what, form)
    if response.status_code != 200:
        try:
            detail = response.json().get("error_description") or response.json().get("error")
        except ValueError:
            detail = f"HTTP {response.status_code}"
        raise SalesforceAuthError(f"Salesforce refused the {what} login ({detail}): check {variables}")
    body = response.json()
    return Session(body["access_token"], (body.get("instance_url") or login_host(settings)).rstrip("/"),
                   renewable=True)


def _jwt_bearer(settings: SalesforceSettings, http: requests.Session) -> Session:
    import jwt  # PyJWT

    key_path = Path(settings.private_key_file or "")
    try:
        private_key = key_path.read_bytes()
    except OSError:
        raise ConfigError(f"SALESFORCE_PRIVATE_KEY_FILE: cannot read {key_path}") from None
    audience = "test" if settings.domain == "test" else "login"
    what = "JWT bearer"
    variables = "SALESFORCE_USERNAME, SALESFORCE_CONSUMER_KEY and the connected app's certificate"
    try:
        domain = salesforce_domain(settings)
        if domain is not None:
            from simple_salesforce import SalesforceLogin

            return _login(settings, lambda: SalesforceLogin(
                session=http, username=settings.username, consumer_key=settings.consumer_key,
                privatekey=private_key.decode(errors="replace"), domain=audience, instance_url=domain),
                what, variables)
        claims = {"iss": settings.consumer_key, "sub": settings.username, "aud": f"https://{audience}.salesforce.com",
                  "exp": int(time.time()) + 180}
        assertion = jwt.encode(claims, private_key, algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError):
        raise ConfigError(f"SALESFORCE_PRIVATE_KEY_FILE: {key_path} is not a PEM RSA private key") from None
    return _oauth_token(settings, http, {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}, what, variables)


def _client_credentials(settings: SalesforceSettings, http: requests.Session) -> Session:
    what = "client credentials"
    variables = "SALESFORCE_CLIENT_ID, SALESFORCE_CLIENT_SECRET and SALESFORCE_INSTANCE_URL"
    domain = salesforce_domain(settings)
    if domain is not None:
        from simple_salesforce import SalesforceLogin

        return _login(settings, lambda: SalesforceLogin(
            session=http, consumer_key=settings.client_id, consumer_secret=settings.client_secret, domain=domain),
            what, variables)
    return _oauth_token(settings, http, {
        "grant_type": "client_credentials", "client_id": settings.client_id or "",
        "client_secret": settings.client_secret or ""}, what, variables)


def _password(settings: SalesforceSettings, http: requests.Session) -> Session:
    """The legacy SOAP username/password login (Salesforce retires it in 2027). It logs in at API version
    SOAP_LOGIN_VERSION at the latest: `login()` is gone from v65.0 on (fact sheet §0), and a session it opens is
    good for the REST API at any version."""
    from simple_salesforce import SalesforceLogin

    domain = salesforce_domain(settings)
    version = min(float(settings.api_version), SOAP_LOGIN_VERSION)
    # The security token travels appended to the password, escaped with it (SalesforceLogin escapes only the password).
    return _login(settings, lambda: SalesforceLogin(
        session=http, username=settings.username, password=(settings.password or "") + (settings.security_token or ""),
        security_token="", sf_version=f"{version:.1f}", client_id="lspos-sync", domain=domain or "login",
        scratch_url=None if domain is not None else login_host(settings)),
        "username/password", "SALESFORCE_USERNAME, SALESFORCE_PASSWORD and SALESFORCE_SECURITY_TOKEN",
        advice={"INVALID_OPERATION": "this org does not offer the SOAP login() (off by default in orgs created in "
                                     "Winter '26 or later): log in with JWT bearer (SALESFORCE_CONSUMER_KEY, "
                                     "SALESFORCE_PRIVATE_KEY_FILE) or client credentials (SALESFORCE_CLIENT_ID, "
                                     "SALESFORCE_CLIENT_SECRET) instead"})
