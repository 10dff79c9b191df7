"""The requests session every Salesforce request goes through, logins and Bulk API 2.0 included.

requests waits for ever by default, and simple-salesforce passes no timeout on its logins or bulk calls, so the
session gives every request one.
"""

from __future__ import annotations

from typing import Any

import requests

from lspos_sync import certificates

# Seconds to connect, and to wait for an answer: a /composite of 25 subrequests may take minutes in a busy org.
TIMEOUT = (30, 300)


class SalesforceSession(requests.Session):
    def __init__(self, timeout: float | tuple[float, float] = TIMEOUT) -> None:
        super().__init__()
        self.timeout = timeout
        if (bundle := certificates.for_requests()) is not None:  # SSL_CERT_FILE alone names the CA (contract §2)
            self.verify = bundle

    # requests' own get/post and simple-salesforce pass everything after the URL by name
    def request(self, method: str | bytes, url: str | bytes,  # type: ignore[override]
                **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().request(method, url, **kwargs)
