"""Salesforce authentication: the four options of contract §2, each returning a session token.

The token endpoints are those of the org's My Domain (SALESFORCE_INSTANCE_URL) when it is set, else
`https://{SALESFORCE_DOMAIN}.salesforce.com`. simple-salesforce's own login helpers only build the latter,
so they cannot reach a My Domain given as a URL (nor an emulator on loopback); the requests are small
enough to send here, and the REST calls then go through the same requests session (salesforce/client.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

from lspos_sync.config import SalesforceSettings
from lspos_sync.errors import ConfigError, SalesforceAuthError

if TYPE_CHECKING:
    import requests


_ATTEMPTS = 3


@dataclass(frozen=True)
class Session:
    access_token: str
    instance_url: str
    renewable: bool


def login_host(settings: SalesforceSettings) -> str:
    return settings.instance_url or f"https://{settings.domain}.salesforce.com"


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
    return _soap_login(settings, http)


def _post(http: requests.Session, url: str, what: str, **kwargs: Any) -> requests.Response:
    """A login request, tried again on a dropped connection or a server error (a login changes nothing)."""
    import requests

    for attempt in range(_ATTEMPTS):
        try:
            response = http.post(url, timeout=60, **kwargs)
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
    url = f"{login_host(settings)}/services/oauth2/token"
    response = _post(http, url, what, data=form)
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
    audience = "https://test.salesforce.com" if settings.domain == "test" else "https://login.salesforce.com"
    claims = {"iss": settings.consumer_key, "sub": settings.username, "aud": audience,
              "exp": int(time.time()) + 180}
    try:
        assertion = jwt.encode(claims, private_key, algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError):
        raise ConfigError(f"SALESFORCE_PRIVATE_KEY_FILE: {key_path} is not a PEM RSA private key") from None
    return _oauth_token(settings, http, {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        "JWT bearer", "SALESFORCE_USERNAME, SALESFORCE_CONSUMER_KEY and the connected app's certificate")


def _client_credentials(settings: SalesforceSettings, http: requests.Session) -> Session:
    return _oauth_token(settings, http, {
        "grant_type": "client_credentials", "client_id": settings.client_id or "",
        "client_secret": settings.client_secret or ""},
        "client credentials", "SALESFORCE_CLIENT_ID, SALESFORCE_CLIENT_SECRET and SALESFORCE_INSTANCE_URL")


def _soap_login(settings: SalesforceSettings, http: requests.Session) -> Session:
    """The legacy username/password login, as simple-salesforce sends it (Salesforce retires it in 2027)."""
    url = f"{login_host(settings)}/services/Soap/u/{settings.api_version}"
    password = (settings.password or "") + (settings.security_token or "")
    body = (
        '<?xml version="1.0" encoding="utf-8" ?>'
        '<env:Envelope xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:env="http://schemas.xmlsoap.org/soap/envelope/" xmlns:urn="urn:partner.soap.sforce.com">'
        '<env:Header><urn:CallOptions><urn:client>lspos-sync</urn:client>'
        '<urn:defaultNamespace>sf</urn:defaultNamespace></urn:CallOptions></env:Header>'
        f'<env:Body><n1:login xmlns:n1="urn:partner.soap.sforce.com"><n1:username>{escape(settings.username or "")}'
        f'</n1:username><n1:password>{escape(password)}</n1:password></n1:login></env:Body></env:Envelope>')
    response = _post(http, url, "username/password", data=body.encode(), headers={
        "content-type": "text/xml", "charset": "UTF-8", "SOAPAction": "login"})
    try:
        tree = ElementTree.fromstring(response.content)
    except ElementTree.ParseError:
        tree = None
    def find(tag: str) -> str | None:
        node = tree.find(f".//{{urn:partner.soap.sforce.com}}{tag}") if tree is not None else None
        return node.text if node is not None else None
    session_id, server_url = find("sessionId"), find("serverUrl")
    if response.status_code != 200 or not session_id or not server_url:
        fault = tree.findtext(".//faultstring") if tree is not None else None
        raise SalesforceAuthError(
            f"Salesforce refused the username/password login ({fault or f'HTTP {response.status_code}'}): check "
            "SALESFORCE_USERNAME, SALESFORCE_PASSWORD and SALESFORCE_SECURITY_TOKEN")
    parts = urlsplit(server_url)
    return Session(session_id, f"{parts.scheme}://{parts.netloc}", renewable=True)
