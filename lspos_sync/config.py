"""Settings from the environment, filled in from a .env file (contract §2); secrets never printed."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from lspos_sync.errors import ConfigError
from lspos_sync.state import default_state_path

MIN_API_VERSION = 46.0  # sObject Collections upsert by external ID

DEFAULT_LIGHTSPEED_API_URL = "https://api.lightspeedapp.com/API/V3"
DEFAULT_LIGHTSPEED_TOKEN_URL = "https://cloud.lightspeedapp.com/auth/oauth/token"

SECRET_VARIABLES = (
    "LIGHTSPEED_CLIENT_SECRET", "LIGHTSPEED_REFRESH_TOKEN", "SALESFORCE_ACCESS_TOKEN",
    "SALESFORCE_CLIENT_SECRET", "SALESFORCE_PASSWORD", "SALESFORCE_SECURITY_TOKEN",
)


_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def fingerprint(secret: str) -> str:
    """A short one-way fingerprint, to recognise a secret without storing or showing it."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def checked_url(name: str, value: str, example: str) -> str:
    """An http(s) URL with a host; anything else is a configuration error (exit 2) at once, not a run failing after
    its retries against a URL no client can reach."""
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: {value!r} is not a URL (e.g. {example})")
    return value


def parse_when(value: str, option: str) -> datetime:
    """ISO 8601 as in contract §1: a date, a date-time, with or without offset or Z; no offset means UTC."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"{option}: {value!r} is not an ISO 8601 date or time (e.g. 2026-03-01, 2026-03-01T09:30:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class SalesforceSettings:
    instance_url: str | None
    access_token: str | None
    username: str | None
    consumer_key: str | None
    private_key_file: str | None
    client_id: str | None
    client_secret: str | None
    password: str | None
    security_token: str | None
    domain: str
    api_version: str

    @property
    def auth_flow(self) -> str:
        """The renewable flows come first: a bare access token cannot be renewed when it expires."""
        if self.username and self.consumer_key and self.private_key_file:
            return "jwt"
        if self.client_id and self.client_secret:
            return "client_credentials"
        if self.username and self.password:
            return "password"
        if self.access_token:
            return "access_token"
        raise ConfigError(
            "no Salesforce credentials: set SALESFORCE_ACCESS_TOKEN, or SALESFORCE_USERNAME + SALESFORCE_CONSUMER_KEY "
            "+ SALESFORCE_PRIVATE_KEY_FILE (JWT), or SALESFORCE_CLIENT_ID + SALESFORCE_CLIENT_SECRET, "
            "or SALESFORCE_USERNAME + SALESFORCE_PASSWORD + SALESFORCE_SECURITY_TOKEN")


@dataclass(frozen=True)
class Settings:
    account_id: str
    client_id: str | None
    client_secret: str | None
    refresh_token: str | None
    lightspeed_api_url: str
    lightspeed_token_url: str
    salesforce: SalesforceSettings
    state_path: Path
    sync_start: datetime | None
    lookback: timedelta
    phone_region: str
    person_account_record_type: str
    api_reserve_percent: float
    enrich_profiles: bool
    mapping_path: Path | None = None
    rollups: bool = False
    bulk_threshold: int = 20_000  # a backfill window with more sales goes through Bulk API 2.0
    sync_customers: bool = False  # LSPOS_SYNC_CUSTOMERS: clients without a sale (customer_feed.py)
    # LIGHTSPEED_ACCOUNTS: account id -> (client id, client secret, refresh token), in the order given
    accounts: dict[str, tuple[str | None, str | None, str | None]] = field(default_factory=dict, repr=False)
    refresh_token_variable: str = "LIGHTSPEED_REFRESH_TOKEN"  # where this account's token is set
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def several_accounts(self) -> bool:
        return bool(self.accounts)

    @property
    def account_ids(self) -> list[str]:
        """The Lightspeed accounts this configuration syncs, in order."""
        return list(self.accounts) if self.accounts else [self.account_id] if self.account_id else []

    def for_account(self, account_id: str) -> "Settings":
        """The settings of one account of LIGHTSPEED_ACCOUNTS (the others' credentials left out)."""
        if not self.accounts:
            if account_id != self.account_id:
                raise ConfigError(f"--account {account_id}: not configured (LIGHTSPEED_ACCOUNT_ID is "
                                  f"{self.account_id or 'not set'}; several accounts go in LIGHTSPEED_ACCOUNTS)")
            return self
        if account_id not in self.accounts:
            raise ConfigError(f"--account {account_id}: not one of LIGHTSPEED_ACCOUNTS ({', '.join(self.accounts)})")
        client_id, client_secret, refresh_token = self.accounts[account_id]
        variable = f"LIGHTSPEED_ACCOUNT_{account_id}_REFRESH_TOKEN"
        return replace(self, account_id=account_id, client_id=client_id, client_secret=client_secret,
                       refresh_token=refresh_token, accounts={},
                       refresh_token_variable=f"{variable} (or LIGHTSPEED_REFRESH_TOKEN)")

    def require_lightspeed(self, only: str | None = None) -> None:
        """The Lightspeed variables are set: of every account of LIGHTSPEED_ACCOUNTS, or of the account `only`."""
        if self.accounts:
            for account_id in [only] if only else self.accounts:
                client_id, client_secret, _ = self.accounts[account_id]
                missing = [f"LIGHTSPEED_ACCOUNT_{account_id}_{name} (or LIGHTSPEED_{name})" for name, value in
                           (("CLIENT_ID", client_id), ("CLIENT_SECRET", client_secret)) if not value]
                if missing:
                    raise ConfigError(f"missing configuration for account {account_id}: {', '.join(missing)}")
            return
        missing = [name for name, value in (
            ("LIGHTSPEED_ACCOUNT_ID", self.account_id), ("LIGHTSPEED_CLIENT_ID", self.client_id),
            ("LIGHTSPEED_CLIENT_SECRET", self.client_secret)) if not value]
        if missing:
            raise ConfigError(f"missing configuration: {', '.join(missing)} (set it in the environment or .env)")

    def require_salesforce(self) -> None:
        if not self.salesforce.instance_url and self.salesforce.auth_flow in ("access_token", "client_credentials"):
            raise ConfigError("missing configuration: SALESFORCE_INSTANCE_URL (e.g. https://acme.my.salesforce.com)")
        self.salesforce.auth_flow  # noqa: B018 - raises ConfigError when no credentials are set


def read_environment(env_file: Path | None) -> dict[str, str]:
    """The process environment, with a .env file filling in what it lacks (never overriding it)."""
    values: dict[str, str] = {}
    path = env_file if env_file is not None else Path(".env")
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file: {env_file} does not exist")
    if path.is_file():
        from dotenv import dotenv_values

        try:
            values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
                              f"{error.start}): save it as UTF-8") from None
        except OSError as error:
            raise ConfigError(f"{path} cannot be read: {error.strerror or error}") from None
    # A variable set but empty in the environment does not blank out the file's value.
    values.update({k: v for k, v in os.environ.items() if v != "" or k not in values})
    return values


def load_settings(env: Mapping[str, str], state_override: Path | None = None,
                  mapping_override: Path | None = None) -> Settings:
    def get(name: str, default: str | None = None) -> str | None:
        value = env.get(name)
        return value.strip() if value and value.strip() else default

    def flag(name: str) -> bool:
        raw = (get(name, "false") or "false").lower()
        if raw not in _BOOLEANS:
            raise ConfigError(f"{name}: {raw!r} is not true or false")
        return _BOOLEANS[raw]

    def minutes(name: str, default: int) -> timedelta:
        raw = get(name, str(default))
        try:
            value = int(raw)  # type: ignore[arg-type]
        except ValueError:
            raise ConfigError(f"{name}: {raw!r} is not a whole number of minutes") from None
        if value < 0:
            raise ConfigError(f"{name}: must not be negative")
        return timedelta(minutes=value)

    reserve = get("LSPOS_API_RESERVE_PERCENT", "5")
    try:
        api_reserve = float(reserve)  # type: ignore[arg-type]
    except ValueError:
        api_reserve = -1.0
    if not 0 <= api_reserve < 100:
        raise ConfigError(f"LSPOS_API_RESERVE_PERCENT: {reserve!r} is not a percentage from 0 to 99")
    enrich, rollups = flag("LSPOS_ENRICH_PROFILES"), flag("LSPOS_ROLLUPS")
    threshold = get("LSPOS_BULK_THRESHOLD", "20000") or "20000"
    if not threshold.isdigit():
        raise ConfigError(f"LSPOS_BULK_THRESHOLD: {threshold!r} is not a whole number of sales (e.g. 20000)")
    sync_start = get("LSPOS_SYNC_START")
    region = (get("LSPOS_PHONE_REGION", "US") or "US").upper()
    if len(region) != 2 or not region.isalpha():
        raise ConfigError(f"LSPOS_PHONE_REGION: {region!r} is not a two-letter region code such as US or FR")
    if region != "US":  # (the default needs no look-up: loading libphonenumber's regions takes 35 ms)
        import phonenumbers

        if region not in phonenumbers.SUPPORTED_REGIONS:  # "UK" would read no number written without +44
            raise ConfigError(f"LSPOS_PHONE_REGION: {region!r} is not a region libphonenumber knows (ISO 3166 codes "
                              "such as US, FR" + (", and GB for the United Kingdom)" if region == "UK" else ", GB)"))
    domain = get("SALESFORCE_DOMAIN", "login") or "login"
    # Logins go to https://<domain>.salesforce.com: `login`, `test`, or a My Domain's name such as `acme.my`.
    if not re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", domain) or domain.lower().endswith("salesforce.com"):
        raise ConfigError(f"SALESFORCE_DOMAIN: {domain!r} is not a login domain: login, test (a sandbox), or a My "
                          "Domain's name such as acme.my (logins go to https://<domain>.salesforce.com)")
    api_version = (get("SALESFORCE_API_VERSION", "62.0") or "62.0").lstrip("vV")
    try:
        version = float(api_version)
    except ValueError:
        raise ConfigError(f"SALESFORCE_API_VERSION: {api_version!r} is not a version such as 62.0") from None
    if version < MIN_API_VERSION:  # sObject Collections upsert, and its `created` flag (fact sheet §1.1, §1.3)
        raise ConfigError(f"SALESFORCE_API_VERSION: {api_version} is older than {MIN_API_VERSION}, the first version "
                          "with sObject Collections upsert, which every write uses")
    account_id = get("LIGHTSPEED_ACCOUNT_ID", "") or ""
    if account_id and not account_id.isdigit():
        raise ConfigError(f"LIGHTSPEED_ACCOUNT_ID: {account_id!r} is not a Lightspeed account number")
    accounts: dict[str, tuple[str | None, str | None, str | None]] = {}
    for listed in (get("LIGHTSPEED_ACCOUNTS", "") or "").split(","):
        listed = listed.strip()
        if not listed:
            continue
        if not listed.isdigit():
            raise ConfigError(f"LIGHTSPEED_ACCOUNTS: {listed!r} is not a Lightspeed account number")
        accounts[listed] = tuple(  # type: ignore[assignment]
            get(f"LIGHTSPEED_ACCOUNT_{listed}_{name}") or get(f"LIGHTSPEED_{name}")
            for name in ("CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN"))
    api_url = checked_url("LIGHTSPEED_API_URL", get("LIGHTSPEED_API_URL") or DEFAULT_LIGHTSPEED_API_URL,
                          DEFAULT_LIGHTSPEED_API_URL)
    token_url = checked_url("LIGHTSPEED_TOKEN_URL", get("LIGHTSPEED_TOKEN_URL") or DEFAULT_LIGHTSPEED_TOKEN_URL,
                            DEFAULT_LIGHTSPEED_TOKEN_URL)
    instance_url = get("SALESFORCE_INSTANCE_URL")
    if instance_url:
        checked_url("SALESFORCE_INSTANCE_URL", instance_url, "https://acme.my.salesforce.com")
    state_path = state_override or (Path(get("LSPOS_STATE_PATH")) if get("LSPOS_STATE_PATH") else default_state_path())
    settings = Settings(
        account_id=account_id,
        client_id=get("LIGHTSPEED_CLIENT_ID"),
        client_secret=get("LIGHTSPEED_CLIENT_SECRET"),
        refresh_token=get("LIGHTSPEED_REFRESH_TOKEN"),
        lightspeed_api_url=api_url.rstrip("/"),
        lightspeed_token_url=token_url,
        salesforce=SalesforceSettings(
            instance_url=instance_url.rstrip("/") if instance_url else None,
            access_token=get("SALESFORCE_ACCESS_TOKEN"),
            username=get("SALESFORCE_USERNAME"),
            consumer_key=get("SALESFORCE_CONSUMER_KEY"),
            private_key_file=get("SALESFORCE_PRIVATE_KEY_FILE"),
            client_id=get("SALESFORCE_CLIENT_ID"),
            client_secret=get("SALESFORCE_CLIENT_SECRET"),
            password=get("SALESFORCE_PASSWORD"),
            security_token=get("SALESFORCE_SECURITY_TOKEN"),
            domain=domain,
            api_version=api_version,
        ),
        state_path=Path(state_path),
        sync_start=parse_when(sync_start, "LSPOS_SYNC_START") if sync_start else None,
        lookback=minutes("LSPOS_LOOKBACK_MINUTES", 30),
        phone_region=region,
        person_account_record_type=get("LSPOS_PERSON_ACCOUNT_RECORD_TYPE", "PersonAccount") or "PersonAccount",
        api_reserve_percent=api_reserve,
        enrich_profiles=enrich,
        mapping_path=mapping_override or (Path(get("LSPOS_MAPPING")) if get("LSPOS_MAPPING") else None),  # type: ignore[arg-type]
        rollups=rollups,
        bulk_threshold=int(threshold),
        sync_customers=flag("LSPOS_SYNC_CUSTOMERS"),
        accounts=accounts,
        secrets=tuple(v for name in SECRET_VARIABLES if (v := get(name))) + tuple(
            v for credentials in accounts.values() for v in credentials[1:] if v),
    )
    if settings.mapping_path is not None:
        # Checked like every other variable, whatever the command: a broken mapping file (or one LSPOS_ROLLUPS cannot
        # use) is exit 2 at start, before anything is read (docs/mapping.md). Without one nothing can be wrong.
        from lspos_sync import fieldmap

        fieldmap.for_settings(settings)
    return settings
