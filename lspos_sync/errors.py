"""The exceptions a user can act on, each with the exit code the CLI maps it to (contract §1)."""


class SyncError(Exception):
    """An expected failure: the message is one line a user can act on; no traceback is shown."""

    exit_code = 1


class ConfigError(SyncError):
    """Usage or configuration error: missing variable, bad date, bad value."""

    exit_code = 2


class LockHeld(SyncError):
    """Another run holds the lock for this state store."""

    exit_code = 4


class RunFailed(SyncError):
    """The run failed; the checkpoint did not move past anything unwritten."""

    exit_code = 1


class LightspeedAuthError(RunFailed):
    """Lightspeed refused the refresh token: the app must be re-authorised."""

    def __init__(self, message: str, oauth_error: str = "") -> None:
        super().__init__(message)
        self.oauth_error = oauth_error  # the token endpoint's `error`, e.g. invalid_grant for a revoked token


class SalesforceAuthError(RunFailed):
    """Salesforce refused the credentials or the session."""


class QueryTooHeavy(RunFailed):
    """Salesforce refused a statement as too complicated (QUERY_TOO_COMPLICATED) or stopped it as running too long
    (QUERY_TIMEOUT, REQUEST_RUNNING_TOO_LONG): the lookup may be asked again in smaller statements
    (queries.Budget)."""

    def __init__(self, what: str, refusal: str) -> None:
        super().__init__(f"Salesforce {what} ({refusal})")
        self.what = what  # "found a lookup too complicated", for the one line that says it is asked again
