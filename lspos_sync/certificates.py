"""The CA bundle the environment names, for both HTTP clients.

httpx reads `SSL_CERT_FILE` (or `SSL_CERT_DIR`); requests, under simple-salesforce, reads `REQUESTS_CA_BUNDLE` (or
`CURL_CA_BUNDLE`). The contract (§2) honours both variables so that both APIs can be pointed at emulators over
HTTPS; set alone, either one would reach only one of the two clients. So a client whose own variable is unset is
given the other's. A client whose own variable is set reads it itself, as it always does.

Both libraries read the process environment only; a variable set in the .env file alone is put there first
(`adopt`), since the .env fills in what the environment lacks (§2).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import ssl

_HTTPX = ("SSL_CERT_FILE", "SSL_CERT_DIR")
_REQUESTS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def adopt(env: Mapping[str, str]) -> None:
    """Puts the certificate variables of the configuration (the environment, filled in from .env) that the process
    environment lacks into it, where httpx and requests read them."""
    for name in _HTTPX + _REQUESTS:
        if env.get(name) and not os.environ.get(name):
            os.environ[name] = env[name]


def for_httpx() -> ssl.SSLContext | bool:
    """`verify=` for an httpx client: True (its own variables, or certifi), or a context on requests' bundle."""
    import ssl  # here, not above: every command imports this module for `adopt`, and ssl takes 20 ms to import

    bundle = _named(_REQUESTS) if not _named(_HTTPX) else None
    if bundle is None:
        return True
    return ssl.create_default_context(capath=bundle) if os.path.isdir(bundle) else \
        ssl.create_default_context(cafile=bundle)


def for_requests() -> str | None:
    """The bundle to give a requests session, when only httpx's variables name one (else requests decides)."""
    return _named(_HTTPX) if not _named(_REQUESTS) else None


def _named(variables: tuple[str, ...]) -> str | None:
    return next((os.environ[name] for name in variables if os.environ.get(name)), None)
