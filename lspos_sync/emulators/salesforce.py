"""An emulator of the Salesforce REST API, with OAuth and SOAP login, served over HTTPS on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import itertools
import json
import re
import secrets
import string
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

import jwt

from . import soql
from .http import DropConnection, EmulatorServer, Request, Response, loopback_tls

PAGE_SIZE = 2000  # query rows per page (the REST default and maximum)
COLLECTION_LIMIT = 200  # records per sObject Collections request
CHUNK_LIMIT = 10  # runs of same-type records per Collections create
COMPOSITE_LIMIT = 25  # subrequests per /composite
COMPOSITE_HEAVY_LIMIT = 5  # of which Collections or query/queryAll
MAX_URI_BYTES = 16_384  # the URI and the headers together
# fact sheet §1.1, §1.2: sObject Collections from API 42.0, their upsert from 46.0, inside /composite from 43.0
COLLECTIONS_VERSION, COLLECTIONS_UPSERT_VERSION, COLLECTIONS_IN_COMPOSITE_VERSION = 42.0, 46.0, 43.0
OLDEST_VERSION = 31
SOAP_LOGIN_LAST_VERSION = 64.0  # login() is gone from API v65.0 on (fact sheet §0)
ORG_ID = "00D5g00000HqORGEAA"
USER_ID = "0055g00000HqUSREAA"
JWT_AUDIENCES = ["https://login.salesforce.com", "https://test.salesforce.com"]

_API_PATH = re.compile(r"^/services/data/v(\d+\.\d)(/.*)?$")
_SOAP_PATH = re.compile(r"^/services/Soap/u/(\d+\.\d)/?$")
_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SOAP_ENVELOPE = "http://schemas.xmlsoap.org/soap/envelope/"
_REFERENCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
_REFERENCE = re.compile(r"@\{([^}]*)\}")
_REFERENCE_EXPR = re.compile(r"([A-Za-z0-9][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_]+|\[\d+\])*)")
_TEXT_KINDS = {"id", "text", "textarea", "email", "phone", "url", "picklist", "reference"}
_NUMBER_KINDS = {"currency", "number", "percent", "int"}
_LENGTH_KINDS = {"text", "textarea", "email", "phone", "url", "picklist"}  # kinds whose `length` is characters
# The emulator's kinds as describe names them: a custom Number field is a double whatever its scale.
_DESCRIBE_TYPES = {"id": "id", "text": "string", "textarea": "textarea", "email": "email", "phone": "phone",
                   "url": "url", "picklist": "picklist", "reference": "reference", "boolean": "boolean",
                   "currency": "currency", "number": "double", "percent": "percent", "int": "int", "date": "date",
                   "datetime": "datetime"}
_SOAP_TYPES = {"id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean", "currency": "xsd:double",
               "number": "xsd:double", "percent": "xsd:double", "int": "xsd:int", "date": "xsd:date",
               "datetime": "xsd:dateTime"}  # every other kind is xsd:string
_SYSTEM_FIELDS = ("CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted")
MASTER_RECORD_TYPE_ID = "012000000000000AAA"  # the record type every object has, listed as "Master"
_HALTED = "The transaction was rolled back since another operation in the same transaction failed."
_ROLLED_BACK = ("Record rolled back because not all records were valid and the request was using "
                "AllOrNone header")


@dataclass(frozen=True)
class Field:
    """One field of the emulated org's schema."""

    name: str
    # id, text, textarea, email, phone, url, picklist, reference, boolean, currency, number, percent, int, date,
    # datetime (describe's types, but `text` is string and `number` is double)
    kind: str
    length: int = 0  # characters for text kinds; digits before the point for numbers (all digits for int)
    scale: int = 0
    label: str = ""
    required: bool = False
    writable: bool = True
    external_id: bool = False  # External ID, and Unique (case-insensitive) unless `unique` is False
    # An External ID field need not be Unique (fact sheet §1.3: "External ID without Unique needs View All Data",
    # and several matches are 300 / DUPLICATE_EXTERNAL_ID). None: as `external_id`.
    unique: bool | None = None
    reference_to: str | None = None
    relationship: str | None = None
    master_detail: bool = False
    values: tuple[str, ...] = ()  # restricted picklist
    person: bool = False  # only valid on person accounts
    sortable: bool = True
    # A formula or roll-up summary field: read-only and described as calculated. The emulator does not
    # compute it, so it reads as null; `formula` is what describe shows as calculatedFormula.
    calculated: bool = False
    formula: str | None = None

    @property
    def read_only(self) -> bool:
        return not self.writable or self.calculated

    @property
    def is_unique(self) -> bool:
        return self.external_id if self.unique is None else self.unique


@dataclass
class RequestRecord:
    method: str
    path: str  # the request target as sent, query string included
    status: int
    body: Any  # parsed JSON, the form for oauth2, the XML text for SOAP
    subrequests: list[dict] = field(default_factory=list)  # /composite: each subrequest plus its httpStatusCode
    dropped: bool = False


class ApiError(Exception):
    """A request-level error: the whole request fails with this status and error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> Response:
        return Response(self.status, [{"message": self.message, "errorCode": self.code}])


class RecordError(Exception):
    """A record-level failure: reported per record (Collections) or as a 400 (sObject Rows)."""

    def __init__(self, code: str = "", message: str = "", fields: list[str] | None = None,
                 errors: list[dict] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [{"statusCode": code, "message": message, "fields": fields or []}]

    def response(self) -> Response:
        return Response(400, [{"message": e["message"], "errorCode": e["statusCode"], "fields": e["fields"]}
                              for e in self.errors])


@dataclass
class _Fault:
    remaining: int
    path_contains: str
    drop: bool
    status: int = 0
    error_code: str = ""
    after_commit: bool = True
    body_contains: str = ""  # only requests whose body has this text (e.g. a DELETE subrequest)


def _text(name: str, length: int, **kw: Any) -> Field:
    return Field(name, kw.pop("kind", "text"), length, **kw)


def _money(name: str) -> Field:
    return Field(name, "currency", 14, 2)  # Currency(16,2)


def _system_fields() -> list[Field]:
    return [Field(n, "datetime", writable=False, label=label) for n, label in
            (("CreatedDate", "Created Date"), ("LastModifiedDate", "Last Modified Date"),
             ("SystemModstamp", "System Modstamp"))] + [Field("IsDeleted", "boolean", writable=False, label="Deleted")]


def _schema(person_accounts: bool) -> dict[str, list[Field]]:
    """The org's objects (contract §3); the person-account fields exist only when the feature is on."""
    account = [Field("Id", "id", writable=False), _text("Name", 255), _text("Phone", 40, kind="phone"),
               _text("LS_Customer_ID__c", 40, external_id=True, label="LS Customer ID"),
               # the loyalty roll-ups (docs/data-model.md): written by lspos-sync, so plain fields, not formulas
               _money("Lifetime_Spend__c"), Field("Purchase_Count__c", "number", 18, 0),
               Field("First_Purchase_Date__c", "datetime"), Field("Last_Purchase_Date__c", "datetime")]
    if person_accounts:
        phones = [_text(n, 40, kind="phone", label=label, person=True, sortable=False) for n, label in
                  (("PersonMobilePhone", "Mobile"), ("PersonHomePhone", "Home Phone"),
                   ("PersonOtherPhone", "Other Phone"))]
        account += [_text("FirstName", 40, label="First Name", person=True),
                    _text("LastName", 80, label="Last Name", person=True),
                    Field("RecordTypeId", "reference", label="Record Type ID", reference_to="RecordType",
                          relationship="RecordType"),
                    Field("IsPersonAccount", "boolean", writable=False),
                    _text("PersonEmail", 80, kind="email", label="Email", person=True, sortable=False), *phones,
                    Field("PersonBirthdate", "date", label="Birthdate", person=True),
                    _text("PersonMailingStreet", 255, label="Mailing Street", person=True),
                    _text("PersonMailingCity", 40, label="Mailing City", person=True),
                    _text("PersonMailingPostalCode", 20, label="Mailing Zip/Postal Code", person=True),
                    _text("PersonMailingCountry", 80, label="Mailing Country", person=True)]
    record_type = [Field("Id", "id", writable=False)] + [
        _text(n, 80, writable=False) for n in ("Name", "DeveloperName", "SobjectType")] + [
        Field("IsPersonType", "boolean", writable=False)]
    sale = [Field("Id", "id", writable=False), _text("Name", 80, writable=False),
            _text("LS_Sale_ID__c", 40, external_id=True, label="LS Sale ID"),
            Field("Account__c", "reference", label="Account", reference_to="Account", relationship="Account__r"),
            _text("Match_Status__c", 255, kind="picklist", label="Match Status",
                  values=("Linked", "Email", "Phone", "Created", "Guest", "Ambiguous")),
            _text("Ticket_Number__c", 40), Field("Transaction_Date__c", "datetime"),
            _text("Status__c", 255, kind="picklist", label="Status", values=("Completed", "Refund", "Voided")),
            _text("Shop_Name__c", 80), _money("Subtotal__c"), _money("Discount__c"), _money("Tax__c"),
            _money("Total__c"), _money("Amount_Paid__c"), _text("Payment_Methods__c", 255),
            Field("LS_Updated_At__c", "datetime")]
    line = [Field("Id", "id", writable=False), _text("Name", 80, writable=False),
            _text("LS_Sale_Line_ID__c", 40, external_id=True, label="LS Sale Line ID"),
            Field("Sales_Transaction__c", "reference", label="Sales Transaction", required=True,
                  reference_to="Sales_Transaction__c", relationship="Sales_Transaction__r", master_detail=True),
            _text("SKU__c", 80, label="SKU"), _text("Product_Name__c", 255), _text("Category__c", 80),
            Field("Quantity__c", "number", 10, 2), _money("Unit_Price__c"), _money("Discount__c"),
            _money("Tax__c"), _money("Line_Total__c")]
    tables = {"Account": account, "RecordType": record_type, "Sales_Transaction__c": sale, "Sales_Line_Item__c": line}
    return {name: fields + _system_fields() for name, fields in tables.items()}


# name: (key prefix, label, the Name field's auto-number format or None for a text Name)
_OBJECTS = {"Account": ("001", "Account", None), "RecordType": ("012", "Record Type", None),
            "Sales_Transaction__c": ("a0A", "Sales Transaction", "ST-{:07d}"),
            "Sales_Line_Item__c": ("a0B", "Sales Line Item", "SLI-{:07d}")}


def _label(f: Field) -> str:
    return f.label or f.name.removesuffix("__c").replace("_", " ")


def _object_label(name: str) -> str:
    return name.removesuffix("__c").replace("_", " ")


def _relationship_for(name: str) -> str:
    """The relationship name of a lookup field: `POS_Sale__c` -> `POS_Sale__r`, `OwnerId` -> `Owner`."""
    return name.removesuffix("__c") + "__r" if name.endswith("__c") else name.removesuffix("Id")


def _groupable(f: Field) -> bool:
    """Whether GROUP BY accepts the field (describe's `groupable`): not double, currency, percent, date-time or
    text area fields, nor the fields that cannot be sorted either."""
    return f.sortable and f.kind not in {"currency", "number", "percent", "datetime", "textarea"}


def _with_checksum(id15: str) -> str:
    """The 18-character form of a 15-character Id: three case-encoding characters appended."""
    suffix = ""
    for start in range(0, 15, 5):
        bits = sum(1 << i for i, c in enumerate(id15[start:start + 5]) if c.isupper())
        suffix += "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"[bits]
    return id15 + suffix


def _normalize_id(value: Any) -> str | None:
    """An 18-character Id, or None when `value` is not a well-formed Id."""
    if not isinstance(value, str) or not _ID.match(value):
        return None
    full = _with_checksum(value[:15])
    return full if len(value) == 15 or full == value else None


def _system_clock() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _format_datetime(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def _version_label(version: int) -> str:
    step = version - 60  # v60.0 is Spring '24; three releases a year
    return f"{('Spring', 'Summer', 'Winter')[step % 3]} '{24 + (step + 1) // 3}"


class SalesforceEmulator:
    """A Salesforce org with the lspos-sync data model, reachable over HTTPS on 127.0.0.1."""

    def __init__(self, tls_dir: Path, api_version: str = "62.0", access_token: str = "sf-access-token",
                 consumer_key: str = "sf-consumer-key", consumer_secret: str = "sf-consumer-secret",
                 username: str = "integration@example.com", password: str = "sf-password",
                 security_token: str = "sf-security-token", jwt_public_key_pem: bytes | None = None,
                 daily_api_limit: int = 100_000, latency: float = 0.0, person_accounts: bool = True,
                 clock: Callable[[], dt.datetime] | None = None, max_query_conditions: int | None = None) -> None:
        # The org's clock: system dates (CreatedDate...) and the end of an `outage` are on it, so a test can
        # move it with the Lightspeed emulator's.
        self._clock = clock or _system_clock
        self.api_version = api_version
        self.access_token = access_token
        self.consumer_key, self.consumer_secret = consumer_key, consumer_secret
        self.username, self.password, self.security_token = username, password, security_token
        self.jwt_public_key_pem = jwt_public_key_pem
        self.daily_api_limit = daily_api_limit
        self.person_accounts = person_accounts
        self.api_calls = 0
        self.like_supported = True  # False: a server whose SOQL refuses LIKE (to test the fallback)
        # A statement whose WHERE holds more conditions (each comparison, each IN value) is refused with
        # QUERY_TOO_COMPLICATED. The fact sheet gives no threshold (§3.2), so none unless a test sets one.
        self.max_query_conditions = max_query_conditions
        # A statement whose WHERE holds more conditions than this runs past the org's time and is stopped with
        # QUERY_TIMEOUT (fact sheet §4: "exceeded the 10-minute limit or the SOQL limits"; what a large org does
        # with many `LIKE` patterns over unindexed phone fields). None: no statement times out.
        self.query_timeout_conditions: int | None = None
        # False: a server that answers describe subrequests inside /composite with 404 (to test the fallback)
        self.describe_in_composite = True
        # fact sheet §1.3: `created` is in a Collections upsert's per-record results from v46, but "one doc example
        # even omits created on a success, so treat both as optional"; False leaves it out of every result
        self.upsert_results_say_created = True
        # fact sheet §0: SOAP login() "is off by default in orgs created in Winter '26 or later"; False: such an org
        # (the fault's wording is the emulator's)
        self.soap_login_enabled = True
        self.requests: list[RequestRecord] = []
        ssl_context, self._ca_bundle = loopback_tls(Path(tls_dir))
        self._server = EmulatorServer(self._handle, ssl_context, latency=latency)
        self._lock = threading.RLock()  # one store lock: every API request is atomic
        self._tokens = {access_token}
        self._faults: list[_Fault] = []
        self._outage_until: dt.datetime | None = None
        self._lock_storms: list[list] = []  # [remaining, sobject or None]
        self._races: list[list] = []  # [remaining, sobject or None]
        self._rules: list[tuple[str, Callable[[dict], bool], str, str]] = []
        self._cursors: dict[str, list[dict]] = {}
        self._ids = itertools.count(1)
        self._schema = {name: {f.name: f for f in fields} for name, fields in _schema(person_accounts).items()}
        self._key_prefixes = {name: prefix for name, (prefix, _, _) in _OBJECTS.items()}
        self._object_labels = {name: label for name, (_, label, _) in _OBJECTS.items()}
        self._auto_number_formats = {name: fmt for name, (_, _, fmt) in _OBJECTS.items() if fmt}
        self._auto_numbers: dict[str, Iterator[int]] = {}
        self._rows: dict[str, dict[str, dict]] = {}
        self._recycle: dict[str, dict[str, dict]] = {}  # for queryAll
        # Derived from the schema by _reindex, after construction and after every schema edit:
        self._fields_ci: dict[str, dict[str, Field]] = {}
        self._relationships: dict[str, dict[str, Field]] = {}
        self._objects_ci: dict[str, str] = {}
        self._unique: dict[tuple[str, str], dict[str, str]] = {}
        self._reindex()
        self._undo: list[tuple[str, str, dict | None, dict | None]] = []
        from .bulk import BulkIngest  # it builds on this module's record rules

        self.bulk = BulkIngest(self)
        self.person_account_record_type_id: str | None = None
        self._business_record_type_id: str | None = None
        if person_accounts:
            self.person_account_record_type_id = self._seed_record_type("PersonAccount", "Person Account", True)
            self._business_record_type_id = self._seed_record_type("Business_Account", "Business Account", False)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> str:
        self._server.start()
        return self.instance_url

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> "SalesforceEmulator":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def instance_url(self) -> str:
        return self._server.base_url

    @property
    def ca_bundle(self) -> Path:
        return self._ca_bundle

    def env(self) -> dict[str, str]:
        return {"SALESFORCE_INSTANCE_URL": self.instance_url, "SALESFORCE_ACCESS_TOKEN": self.access_token,
                "SALESFORCE_API_VERSION": self.api_version, "SSL_CERT_FILE": str(self.ca_bundle),
                "REQUESTS_CA_BUNDLE": str(self.ca_bundle)}

    # ---- data access for seeding and assertions (no API call counted) -----------------------------

    def insert(self, sobject: str, fields: dict) -> str:
        """Create a record with the API's validation; raises ValueError with the Salesforce error on failure."""
        with self._lock:
            try:
                sobject = self._object(sobject)
                return self._save(sobject, self._deserialize(sobject, fields), None)
            except ApiError as error:
                raise ValueError(f"{error.code}: {error.message}") from None
            except RecordError as error:
                raise ValueError("; ".join(f"{e['statusCode']}: {e['message']}" for e in error.errors)) from None
            finally:
                self._undo.clear()

    def records(self, sobject: str) -> list[dict]:
        with self._lock:
            return [dict(row) for row in self._rows[sobject].values()]

    def get(self, sobject: str, record_id: str) -> dict | None:
        with self._lock:
            row = self._rows[sobject].get(_normalize_id(record_id) or "")
            return dict(row) if row else None

    # ---- schema edits: what an org's admin changes in Setup (no API call counted) ------------------

    def add_field(self, sobject: str, new: Field) -> None:
        """Add a field to an object. Existing records read it as null; an external ID field is unique from
        now on; a reference field's relationship name (given, or derived as `X__c` -> `X__r`) works in queries
        and in request bodies. Raises ValueError for an unknown object or target, or a name already taken."""
        with self._lock:
            name = self._known_object(sobject)
            new = self._checked_field(name, new, list(self._schema[name].values()), name)
            self._schema[name][new.name] = new
            for rows in (self._rows[name], self._recycle[name]):
                for row in rows.values():
                    row[new.name] = None
            self._reindex()

    def remove_field(self, sobject: str, name: str) -> None:
        """Take a field away, as when it is deleted or hidden from the integration user by field-level
        security: describe no longer lists it, and queries and bodies naming it fail with INVALID_FIELD.
        Its values go with it. Id cannot be removed."""
        with self._lock:
            sobject = self._known_object(sobject)
            found = self._fields_ci[sobject].get(name.lower())
            if found is None or found.kind == "id":
                raise ValueError(f"{sobject} has no field {name} that can be removed")
            del self._schema[sobject][found.name]
            for rows in (self._rows[sobject], self._recycle[sobject]):
                for row in rows.values():
                    row.pop(found.name, None)
            self._reindex()

    def add_object(self, name: str, fields: Iterable[Field] = (), label: str = "",
                   auto_number: str | None = None) -> None:
        """Create a custom object `name` (ending in __c) with Id, a Name field, the system fields and `fields`.
        Name is an auto number when `auto_number` is a format such as "PS-{:07d}", else a writable Text(80).
        The object gets a key prefix of its own and starts empty."""
        base = [Field("Id", "id", writable=False), _text("Name", 80, writable=auto_number is None)]
        with self._lock:
            self._create_object(name, base + list(fields), label, auto_number)

    def copy_object(self, source: str, name: str, renames: dict[str, str] | None = None,
                    retarget: dict[str, str] | None = None, label: str = "", auto_number: str | None = None) -> None:
        """Create custom object `name` with the fields of `source`, as in an org that deployed the metadata
        under other names. `renames` maps field names of `source` to new ones; a renamed custom reference field
        takes the relationship name of its new name (`POS_Sale__c` -> `POS_Sale__r`). `retarget` maps object
        names: a reference field pointing at a key points at its value instead, e.g. making the copy of
        Sales_Line_Item__c the detail of the copy of Sales_Transaction__c. Name keeps `source`'s auto-number
        format unless `auto_number` is given. Records are not copied."""
        retarget = retarget or {}
        with self._lock:
            source = self._known_object(source)
            renamed = {k.lower(): v for k, v in (renames or {}).items()}
            unknown = sorted(set(renamed) - set(self._fields_ci[source]))
            if unknown:
                raise ValueError(f"{source} has no field {', '.join(unknown)} to rename")
            fmt = auto_number or self._auto_number_formats.get(source)
            fields = []
            for f in self._schema[source].values():
                if f.name in _SYSTEM_FIELDS:
                    continue
                if f.name == "Name":
                    f = replace(f, writable=fmt is None)
                new_name = renamed.get(f.name.lower(), f.name)
                if new_name != f.name:
                    f = replace(f, name=new_name, label="", relationship=_relationship_for(new_name)
                                if f.relationship and new_name.endswith("__c") else f.relationship)
                if f.reference_to in retarget:
                    f = replace(f, reference_to=retarget[f.reference_to])
                fields.append(f)
            self._create_object(name, fields, label, fmt)

    def _known_object(self, name: str) -> str:
        sobject = self._objects_ci.get(name.lower())
        if sobject is None:
            raise ValueError(f"the org has no object {name}")
        return sobject

    def _create_object(self, name: str, fields: list[Field], label: str, auto_number: str | None) -> None:
        if not name.endswith("__c") or not _REFERENCE_ID.match(name) or name.lower() in self._objects_ci:
            raise ValueError(f"{name} is not a new custom object name (it must be unused and end in __c)")
        if "name" not in {f.name.lower() for f in fields} or "id" not in {f.name.lower() for f in fields}:
            raise ValueError(f"{name} needs an Id and a Name field")
        checked: list[Field] = []
        for f in fields:
            checked.append(self._checked_field(name, f, checked, name))
        prefixes = set(self._key_prefixes.values())
        self._key_prefixes[name] = next(p for p in (f"a{d}{c}" for d in string.digits for c in string.ascii_uppercase)
                                        if p not in prefixes)
        self._object_labels[name] = label or _object_label(name)
        if auto_number:
            self._auto_number_formats[name] = auto_number
        self._schema[name] = {f.name: f for f in checked + _system_fields()}
        self._reindex()

    def _checked_field(self, sobject: str, new: Field, existing: list[Field], creating: str) -> Field:
        """`new` as the org would accept it on `sobject`, with a lookup's relationship name filled in."""
        if new.kind not in _DESCRIBE_TYPES:
            raise ValueError(f"{new.name}: unknown kind {new.kind!r}; one of {', '.join(_DESCRIBE_TYPES)}")
        if (new.external_id or new.unique) and new.kind not in ("text", "email"):
            raise ValueError(f"{new.name}: the emulator's external ID and unique fields are text or email")
        if new.kind == "reference":
            if new.reference_to is None or (new.reference_to.lower() not in self._objects_ci
                                            and new.reference_to != creating):
                raise ValueError(f"{new.name}: reference_to names no object of the org: {new.reference_to}")
            new = replace(new, reference_to=self._objects_ci.get(new.reference_to.lower(), new.reference_to),
                          relationship=new.relationship or _relationship_for(new.name))
        elif new.relationship or new.master_detail:
            raise ValueError(f"{new.name}: only a reference field has a relationship")
        taken = {f.name.lower() for f in existing} | {f.relationship.lower() for f in existing if f.relationship}
        for name in filter(None, (new.name, new.relationship)):
            if name.lower() in taken:
                raise ValueError(f"{sobject} already has a field or relationship named {name}")
        return new

    def _reindex(self) -> None:
        """Derive every lookup from the schema: names in any case, relationships, the unique indexes of the
        external ID fields (rebuilt from the records), and storage and counters for new objects."""
        self._fields_ci = {name: {k.lower(): f for k, f in fields.items()} for name, fields in self._schema.items()}
        self._relationships = {name: {f.relationship.lower(): f for f in fields.values() if f.relationship}
                               for name, fields in self._schema.items()}
        self._objects_ci = {name.lower(): name for name in self._schema}
        for name in self._schema:
            self._rows.setdefault(name, {})
            self._recycle.setdefault(name, {})
        for name in self._auto_number_formats:
            self._auto_numbers.setdefault(name, itertools.count(1))
        self._unique = {
            (name, f.name): {row[f.name].casefold(): record_id for record_id, row in self._rows[name].items()
                             if row.get(f.name) is not None}
            for name, fields in self._schema.items() for f in fields.values() if f.is_unique}

    # ---- faults ------------------------------------------------------------------------------------

    def add_validation_rule(self, sobject: str, predicate: Callable[[dict], bool], message: str,
                            error_code: str = "FIELD_CUSTOM_VALIDATION_EXCEPTION") -> None:
        """A rule like an org's validation rule: `predicate(record)` returning True rejects the save."""
        self._rules.append((sobject, predicate, message, error_code))

    def clear_validation_rules(self) -> None:
        """The admin relaxed the rules: what they rejected may now go through."""
        with self._lock:
            self._rules.clear()

    def fail_next(self, count: int = 1, status: int = 503, path_contains: str = "/composite",
                  error_code: str = "SERVER_UNAVAILABLE") -> None:
        """Answer the next `count` matching requests with an error, without executing (or counting) them."""
        self._faults.append(_Fault(count, path_contains, drop=False, status=status, error_code=error_code))

    def clear_faults(self) -> None:
        """The outage is over: pending injected failures, drops, outages and lock storms are forgotten."""
        self._faults.clear()
        self._outage_until = None
        self._lock_storms.clear()
        self._races.clear()

    @property
    def upsert_races_left(self) -> int:
        """How many upserts of a new key the races armed will still make lose."""
        with self._lock:
            return sum(race[0] for race in self._races)

    @property
    def lock_storm_left(self) -> int:
        """How many Collections writes or bulk batches the lock storms armed will still refuse."""
        with self._lock:
            return sum(storm[0] for storm in self._lock_storms)

    def outage(self, until: dt.datetime) -> None:
        """The org is unavailable (maintenance, an incident) until the org's clock reads `until`: every request
        is answered 503 SERVER_UNAVAILABLE without being executed or counted (fact sheet §4)."""
        self._outage_until = until

    def lock_storm(self, count: int, sobject: str | None = None) -> None:
        """Another integration holds the rows: the next `count` sObject Collections writes or Bulk API 2.0
        batches (a job's rows, 10,000 at a time) of `sobject`, or of any object, fail as a whole, every record
        with UNABLE_TO_LOCK_ROW and nothing saved, as Salesforce fails a whole batch when one of its records
        cannot be locked (fact sheet §4)."""
        with self._lock:
            self._lock_storms.append([count, sobject])

    def upsert_race(self, count: int, sobject: str | None = None) -> None:
        """Another client upserts the same new keys at the same moment (a second run on another state store, an
        integration of its own): the next `count` upserts by external ID of a key the org does not hold yet, of
        `sobject` or of any object, lose the race. The other client's record is saved, with the same values and
        not undone by this request's rollback, and this upsert is refused DUPLICATE_VALUE, as public reports of
        concurrent upserts describe (fact sheet §4 [S42]); the same upsert sent again matches that record. On an
        External ID field that is not Unique nothing refuses it: both records are saved, and the key then matches
        two (DUPLICATE_EXTERNAL_ID)."""
        with self._lock:
            self._races.append([count, sobject])

    def drop_next(self, count: int = 1, path_contains: str = "/composite", after_commit: bool = True,
                  body_contains: str = "") -> None:
        """Close the connection of the next `count` matching requests without answering; with
        `after_commit` the request is executed (and committed) first, as when a response is lost."""
        self._faults.append(_Fault(count, path_contains, drop=True, after_commit=after_commit,
                                   body_contains=body_contains))

    def expire_sessions(self) -> None:
        """Invalidate every token issued so far, the configured access_token too."""
        with self._lock:
            self._tokens.clear()

    # ---- HTTP entry point --------------------------------------------------------------------------

    def _handle(self, request: Request) -> Response:
        record = RequestRecord(request.method, request.raw_target, 0, _request_body(request))
        self.requests.append(record)
        if self._outage_until is not None and self._clock() < self._outage_until:
            record.status = 503
            return Response(503, [{"message": "The server is temporarily unavailable for maintenance.",
                                   "errorCode": "SERVER_UNAVAILABLE"}])
        fault = self._take_fault(request.raw_target, request.body.decode(errors="replace"))
        if fault and fault.drop and not fault.after_commit:
            record.dropped = True
            raise DropConnection()
        if fault and not fault.drop:
            # The one documented wording of REQUEST_LIMIT_EXCEEDED (fact sheet §4, samples) whichever limit it
            # means, the daily allocation or the concurrent long requests: a client tells them apart by the
            # numbers, not by the message. Sforce-Limit-Info is on every REST answer (§4), errors included.
            message = "TotalRequests Limit exceeded." if fault.error_code == "REQUEST_LIMIT_EXCEEDED" else \
                "The server is temporarily unavailable."
            response = Response(fault.status, [{"message": message, "errorCode": fault.error_code}])
            if request.path.startswith("/services/data/"):
                response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_calls}/{self.daily_api_limit}"
        else:
            response = self._route(request)
        record.status = response.status
        if request.path.rstrip("/").endswith("/composite") and response.status == 200:
            for sub, result in zip(record.body["compositeRequest"], response.body["compositeResponse"]):
                record.subrequests.append({**sub, "httpStatusCode": result["httpStatusCode"]})
        if fault and fault.drop:
            record.dropped = True
            raise DropConnection()
        return response

    def _take_fault(self, target: str, body: str = "") -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in target and fault.body_contains in body:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _route(self, request: Request) -> Response:
        # §3.2, §4: the URI plus the headers are capped at 16,384 bytes: 414 when the URI alone is too long, 431
        # when the headers take it over
        uri = len(request.raw_target.encode())
        if uri > MAX_URI_BYTES:
            return Response(414, "URI Too Long", content_type="text/plain")
        if uri + sum(len(k) + len(v.encode()) + 4 for k, v in request.headers.items()) > MAX_URI_BYTES:
            return Response(431, "Request Header Fields Too Large", content_type="text/plain")
        if request.path == "/services/oauth2/token" and request.method == "POST":
            return self._oauth_token(request)
        soap = _SOAP_PATH.match(request.path)
        if soap and request.method == "POST":
            return self._soap_login(request, soap.group(1))
        if request.path.rstrip("/") == "/services/data" and request.method == "GET":
            newest = int(float(self.api_version))
            return Response(200, [{"label": _version_label(v), "url": f"/services/data/v{v}.0", "version": f"{v}.0"}
                                  for v in range(OLDEST_VERSION, newest + 1)])
        match = _API_PATH.match(request.path)
        if not match:
            return Response(404, [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}])
        return self._api_request(request, match.group(1), match.group(2) or "")

    def _api_request(self, request: Request, version: str, rest: str) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        with self._lock:
            if scheme.lower() not in ("bearer", "oauth") or token not in self._tokens:
                response = Response(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
            elif self.api_calls >= self.daily_api_limit:
                response = Response(403, [{"message": "TotalRequests Limit exceeded.",
                                           "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
            else:
                self.api_calls += 1
                try:
                    if rest.startswith("/jobs/"):  # Bulk API 2.0: CSV bodies, its own module
                        response = self.bulk.handle(request, version, rest)
                    else:
                        response = self._dispatch(request.method, version, rest, request.query,
                                                  _json_body(request.body), top_level=True)
                except ApiError as error:
                    response = error.response()
                finally:
                    self._undo.clear()
            response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_calls}/{self.daily_api_limit}"
        return response

    # ---- authentication ----------------------------------------------------------------------------

    def _issue_token(self) -> str:
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        with self._lock:
            self._tokens.add(token)
        return token

    def _oauth_token(self, request: Request) -> Response:
        form = request.form()
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            failure = self._check_jwt(form.get("assertion", ""))
        elif grant in ("client_credentials", "password"):
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "basic":
                try:
                    client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":")
                except ValueError:  # bad base64 or not UTF-8
                    client_id = client_secret = None
            if (client_id, client_secret) != (self.consumer_key, self.consumer_secret):
                return Response(400, {"error": "invalid_client", "error_description": "invalid client credentials"})
            failure = None
            if grant == "password" and (form.get("username"), form.get("password")) not in (
                    (self.username, self.password), (self.username, self.password + self.security_token)):
                failure = "authentication failure"
        else:
            return Response(400, {"error": "unsupported_grant_type", "error_description": "grant type not supported"})
        if failure:
            return Response(400, {"error": "invalid_grant", "error_description": failure})
        issued_at = str(int(time.time() * 1000))
        identity = f"https://login.salesforce.com/id/{ORG_ID}/{USER_ID}"
        signature = hmac.new(self.consumer_secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
        return Response(200, {"access_token": self._issue_token(), "instance_url": self.instance_url, "id": identity,
                              "token_type": "Bearer", "issued_at": issued_at,
                              "signature": base64.b64encode(signature).decode()})

    def _check_jwt(self, assertion: str) -> str | None:
        """None when the JWT bearer assertion is acceptable, else the error_description."""
        if not self.jwt_public_key_pem:
            return "invalid assertion"
        try:
            claims = jwt.decode(assertion, self.jwt_public_key_pem, algorithms=["RS256"],
                                audience=[*JWT_AUDIENCES, self.instance_url], issuer=self.consumer_key,
                                options={"require": ["exp", "iss", "sub", "aud"]})
        except jwt.InvalidAudienceError:
            return "audience is invalid"
        except jwt.PyJWTError:
            return "invalid assertion"
        return None if claims["sub"] == self.username else "user hasn't approved this consumer"

    def _soap_login(self, request: Request, version: str) -> Response:
        try:
            values = {el.tag.rsplit("}", 1)[-1]: el.text or "" for el in ET.fromstring(request.body).iter()}
        except ET.ParseError:
            return _soap_fault("INVALID_REQUEST", "The request body is not valid XML.")
        if float(version) > SOAP_LOGIN_LAST_VERSION:
            return _soap_fault("INVALID_OPERATION", f"login() is not available in API version {version}")
        if not self.soap_login_enabled:
            return _soap_fault("INVALID_OPERATION", "SOAP API login() is disabled by default in this org.")
        if (values.get("username"), values.get("password")) != (self.username, self.password + self.security_token):
            return _soap_fault("INVALID_LOGIN", "Invalid username, password, security token; or user locked out.")
        server = f"{self.instance_url}/services/Soap/u/{version}/{ORG_ID[:15]}"
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{_SOAP_ENVELOPE}"'
            ' xmlns="urn:partner.soap.sforce.com"><soapenv:Body><loginResponse><result>'
            f"<metadataServerUrl>{self.instance_url}/services/Soap/m/{version}/{ORG_ID[:15]}</metadataServerUrl>"
            f"<passwordExpired>false</passwordExpired><sandbox>false</sandbox><serverUrl>{server}</serverUrl>"
            f"<sessionId>{escape(self._issue_token())}</sessionId><userId>{USER_ID}</userId>"
            f"<userInfo><organizationId>{ORG_ID}</organizationId><userName>{escape(self.username)}</userName>"
            "</userInfo></result></loginResponse></soapenv:Body></soapenv:Envelope>")
        return Response(200, body, content_type="text/xml; charset=utf-8")

    # ---- REST routing ------------------------------------------------------------------------------

    def _dispatch(self, method: str, version: str, rest: str, query: dict[str, list[str]], body: Any,
                  top_level: bool) -> Response:
        if not OLDEST_VERSION <= float(version) <= float(self.api_version):
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        segments = [unquote(s) for s in rest.strip("/").split("/")] if rest.strip("/") else []
        arg = {k: v[-1] for k, v in query.items()}
        match segments:
            case []:
                _allow(method, "GET")
                return Response(200, {name: f"/services/data/v{version}/{name}" for name in
                                      ("sobjects", "query", "queryAll", "composite", "limits")})
            case ["limits"]:
                _allow(method, "GET")
                return Response(200, {"DailyApiRequests": {"Max": self.daily_api_limit,
                                                           "Remaining": self.daily_api_limit - self.api_calls}})
            case ["query" | "queryAll" as kind]:
                _allow(method, "GET")
                if "q" not in arg:
                    raise ApiError(400, "MALFORMED_QUERY", "A query string has to be specified")
                return self._query(arg["q"], kind, version)
            case ["query" | "queryAll" as kind, locator]:
                _allow(method, "GET")
                return self._query_page(locator, kind, version)
            case ["sobjects", name]:
                _allow(method, "POST")
                sobject = self._object(name, 404)
                try:
                    record_id = self._save(sobject, self._deserialize(sobject, _as_record(body)), None)
                except RecordError as error:
                    return error.response()
                return Response(201, {"id": record_id, "success": True, "errors": []},
                                {"Location": self._url(version, sobject, record_id)})
            case ["sobjects", name, "describe"] if top_level or self.describe_in_composite:
                _allow(method, "GET")
                return Response(200, self._describe(self._object(name, 404), version))
            case ["sobjects", name, record_id]:
                return self._row(method, self._object(name, 404), record_id, arg, body, version)
            case ["sobjects", name, ext_field, value]:
                return self._row_by_external_id(method, self._object(name, 404), ext_field, value, body, version)
            case ["composite"] if top_level:
                _allow(method, "POST")
                return self._composite(body, version)
            case ["composite", "sobjects", *_] if float(version) < COLLECTIONS_VERSION or (
                    not top_level and float(version) < COLLECTIONS_IN_COMPOSITE_VERSION):
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            case ["composite", "sobjects", _, _] if float(version) < COLLECTIONS_UPSERT_VERSION:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            case ["composite", "sobjects"]:
                _allow(method, "POST", "PATCH", "DELETE")
                if method == "DELETE":
                    return self._collection_delete(arg)
                return self._collection_save(method, body)
            case ["composite", "sobjects", name]:
                _allow(method, "GET")
                return self._collection_get(self._object(name, 404), arg, version)
            case ["composite", "sobjects", name, ext_field]:
                _allow(method, "PATCH")
                return self._collection_upsert(self._object(name, 404), ext_field, body)
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def _object(self, name: str, status: int = 400) -> str:
        sobject = self._objects_ci.get(name.lower())
        if sobject is None:
            if status == 404:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            raise ApiError(400, "INVALID_TYPE", f"sObject type '{name}' is not supported. If you are attempting to "
                           "use a custom object, be sure to append the '__c' after the entity name. Please reference "
                           "your WSDL or the describe call for the appropriate names.")
        return sobject

    def _url(self, version: str, sobject: str, record_id: str) -> str:
        return f"/services/data/v{version}/sobjects/{sobject}/{record_id}"

    def _render(self, version: str, sobject: str, row: dict, fields: list[str] | None = None) -> dict:
        names = fields if fields is not None else list(self._schema[sobject])
        return {"attributes": {"type": sobject, "url": self._url(version, sobject, row["Id"])},
                **{name: row.get(name) for name in names}}

    def _field_list(self, sobject: str, raw: str | None) -> list[str] | None:
        if raw is None:
            return None
        names = []
        for name in filter(None, (n.strip() for n in raw.split(","))):
            found = self._fields_ci[sobject].get(name.lower())
            if found is None:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'")
            names.append(found.name)
        return names

    # ---- sObject Describe --------------------------------------------------------------------------

    def _describe(self, sobject: str, version: str) -> dict:
        """The object's metadata in the shape of `GET /sobjects/{name}/describe` (DescribeSObjectResult),
        limited to what the emulated org knows."""
        base = f"/services/data/v{version}/sobjects/{sobject}"
        label = self._object_labels[sobject]
        return {"name": sobject, "label": label, "labelPlural": label + "s", "custom": sobject.endswith("__c"),
                "keyPrefix": self._key_prefixes[sobject], "createable": True, "updateable": True, "queryable": True,
                "fields": [self._describe_field(sobject, f) for f in self._schema[sobject].values()],
                "recordTypeInfos": self._record_type_infos(sobject, base),
                "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"}}

    def _describe_field(self, sobject: str, f: Field) -> dict:
        numeric = f.kind in _NUMBER_KINDS
        auto_number = f.name == "Name" and sobject in self._auto_number_formats
        # A standard object's Name and an auto number always have a value; a custom object's text Name need not.
        name_required = f.name == "Name" and (auto_number or not sobject.endswith("__c"))
        label = (f"{self._object_labels[sobject]} ID" if not sobject.endswith("__c") else "Record ID") \
            if f.kind == "id" else _label(f)
        return {
            "autoNumber": auto_number,
            "calculated": f.calculated,
            "calculatedFormula": f.formula,
            "cascadeDelete": f.master_detail,
            "caseSensitive": False,
            "createable": not f.read_only,
            "custom": f.name.endswith("__c"),
            "defaultedOnCreate": f.kind in ("id", "boolean") or f.name in _SYSTEM_FIELDS or auto_number,
            "digits": f.length if f.kind == "int" else 0,
            "externalId": f.external_id,
            "filterable": True,
            "groupable": _groupable(f),
            "idLookup": f.kind == "id" or f.external_id or f.name == "Name",
            "label": label,
            "length": f.length if f.kind in _LENGTH_KINDS else 18 if f.kind in ("id", "reference") else 0,
            "name": f.name,
            "nameField": f.name == "Name",
            "nillable": not (f.required or f.master_detail or f.kind in ("id", "boolean") or
                             f.name in _SYSTEM_FIELDS or name_required),
            "picklistValues": [{"active": True, "defaultValue": False, "label": value, "validFor": None,
                                "value": value} for value in f.values],
            "precision": f.length + f.scale if numeric and f.kind != "int" else 0,
            "referenceTo": [f.reference_to] if f.reference_to else [],
            "relationshipName": f.relationship,
            "relationshipOrder": 0 if f.master_detail else None,
            "restrictedDelete": False,
            "restrictedPicklist": bool(f.values),
            "scale": f.scale if numeric and f.kind != "int" else 0,
            "soapType": _SOAP_TYPES.get(f.kind, "xsd:string"),
            "sortable": f.sortable,
            "type": _DESCRIBE_TYPES[f.kind],
            "unique": f.is_unique,
            # a master-detail field that does not allow reparenting describes as not updateable
            "updateable": not f.read_only and not f.master_detail,
            "writeRequiresMasterRead": False,
        }

    def _record_type_infos(self, sobject: str, base: str) -> list[dict]:
        """The object's record types, then Master, which every object has and which is the default only
        when there is no other."""
        record_types = sorted((r for r in self._rows["RecordType"].values() if r["SobjectType"] == sobject),
                              key=lambda r: r["Name"])
        default = self._business_record_type_id if sobject == "Account" else None

        def info(record_id: str, name: str, developer_name: str, master: bool, is_default: bool) -> dict:
            return {"active": True, "available": is_default or not master, "defaultRecordTypeMapping": is_default,
                    "developerName": developer_name, "master": master, "name": name, "recordTypeId": record_id,
                    "urls": {"layout": f"{base}/describe/layouts/{record_id}"}}

        return [info(r["Id"], r["Name"], r["DeveloperName"], False, r["Id"] == default) for r in record_types] + [
            info(MASTER_RECORD_TYPE_ID, "Master", "Master", True, not record_types)]

    # ---- sObject Rows ------------------------------------------------------------------------------

    def _live_id(self, sobject: str, raw_id: str) -> str:
        record_id = _normalize_id(raw_id)
        if record_id is None or not record_id.startswith(self._key_prefixes[sobject]):
            raise ApiError(400, "MALFORMED_ID", f"{sobject} ID: id value of incorrect type: {raw_id}")
        if record_id in self._recycle[sobject]:
            raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
        if record_id not in self._rows[sobject]:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return record_id

    def _row(self, method: str, sobject: str, raw_id: str, arg: dict, body: Any, version: str) -> Response:
        _allow(method, "GET", "PATCH", "DELETE")
        record_id = self._live_id(sobject, raw_id)
        try:
            if method == "GET":
                return Response(200, self._render(version, sobject, self._rows[sobject][record_id],
                                                  self._field_list(sobject, arg.get("fields"))))
            if method == "PATCH":
                self._save(sobject, self._deserialize(sobject, _as_record(body)), self._rows[sobject][record_id])
            else:
                self._delete(sobject, record_id)
        except RecordError as error:
            return error.response()
        return Response(204)

    def _row_by_external_id(self, method: str, sobject: str, ext_name: str, value: str, body: Any,
                            version: str) -> Response:
        _allow(method, "GET", "PATCH", "DELETE")
        ext = self._external_id_field(sobject, ext_name)
        matches = self._matching_ids(sobject, ext.name, value)
        if len(matches) > 1:  # fact sheet §1.3: several matches -> 300, the matching records listed
            return Response(300, [self._url(version, sobject, record_id) for record_id in matches])
        existing_id = matches[0] if matches else None
        if method == "PATCH":
            values = self._deserialize(sobject, _as_record(body))
            values.setdefault(ext.name, value)
            existing = self._rows[sobject][existing_id] if existing_id else None
            try:
                record_id = self._save(sobject, values, existing)
            except RecordError as error:
                return error.response()
            created = existing is None
            return Response(201 if created else 200, {"id": record_id, "success": True, "errors": [],
                                                      "created": created},
                            {"Location": self._url(version, sobject, record_id)} if created else {})
        if existing_id is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if method == "GET":
            return Response(200, self._render(version, sobject, self._rows[sobject][existing_id]))
        try:
            self._delete(sobject, existing_id)
        except RecordError as error:
            return error.response()
        return Response(204)

    def _external_id_field(self, sobject: str, name: str) -> Field:
        found = self._fields_ci[sobject].get(name.lower())
        if found is None or not found.external_id:
            raise ApiError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {name}")
        return found

    def _matching_ids(self, sobject: str, field_name: str, key: str) -> list[str]:
        """The live records whose `field_name` holds `key` (without regard to case): at most one on a Unique
        field, any number on an External ID field that is not Unique."""
        index = self._unique.get((sobject, field_name))
        if index is not None:
            found = index.get(key.casefold())
            return [found] if found else []
        return [record_id for record_id, row in self._rows[sobject].items()
                if row.get(field_name) is not None and row[field_name].casefold() == key.casefold()]

    def _match_one(self, sobject: str, ext: Field, key: str) -> str | None:
        """The one record an upsert or a foreign-key reference by external ID matches, None for none; several
        (a field that is External ID but not Unique) fail the record with DUPLICATE_EXTERNAL_ID (§1.3, §4)."""
        matches = self._matching_ids(sobject, ext.name, key)
        if len(matches) > 1:
            raise RecordError("DUPLICATE_EXTERNAL_ID", f"{_label(ext)}: more than one record found for external id "
                              f"field: [{', '.join(matches)}]", [ext.name])
        return matches[0] if matches else None

    # ---- sObject Collections -----------------------------------------------------------------------

    def _collection_records(self, body: Any) -> tuple[list[dict], bool]:
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be an object with a records array")
        records = body["records"]
        if len(records) > COLLECTION_LIMIT:
            raise ApiError(400, "EXCEEDED_ID_LIMIT",
                           "record limit reached. cannot submit more than 200 records into this call")
        if not all(isinstance(r, dict) for r in records):
            raise ApiError(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
        return records, bool(body.get("allOrNone", False))

    def _record_type(self, record: dict) -> str:
        declared = (record.get("attributes") or {}).get("type")
        if not declared:
            raise ApiError(400, "INVALID_TYPE", "Must send a concrete entity type.")
        return self._object(declared)

    def _collection_save(self, method: str, body: Any) -> Response:
        records, all_or_none = self._collection_records(body)
        # The whole body is deserialized before anything is saved, so shape errors fail the whole request.
        typed = [(self._record_type(r), r) for r in records]
        if method == "POST":
            chunks = sum(1 for i, (sobject, _) in enumerate(typed) if i == 0 or typed[i - 1][0] != sobject)
            if chunks > CHUNK_LIMIT:
                raise ApiError(400, "LIMIT_EXCEEDED", "Cannot have more than 10 chunks in a single operation. "
                                                      "Please rearrange the data to reduce chunking.")
        # Field names are case-insensitive; the update docs spell the key `id`.
        prepared = [(sobject, next((v for k, v in r.items() if k.lower() == "id"), None),
                     self._deserialize(sobject, {k: v for k, v in r.items() if k.lower() != "id"}))
                    for sobject, r in typed]

        def create(sobject: str, raw_id: Any, values: dict) -> dict:
            if raw_id is not None:
                raise RecordError("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
            return {"id": self._save(sobject, values, None), "success": True, "errors": []}

        def update(sobject: str, raw_id: Any, values: dict) -> dict:
            if not raw_id:
                raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call")
            record_id = _normalize_id(raw_id)
            if record_id is None or not record_id.startswith(self._key_prefixes[sobject]):
                raise RecordError("MALFORMED_ID", f"{sobject} ID: id value of incorrect type: {raw_id}", ["Id"])
            if record_id not in self._rows[sobject]:
                raise RecordError("ENTITY_IS_DELETED", "entity is deleted")
            self._save(sobject, values, self._rows[sobject][record_id])
            return {"id": record_id, "success": True, "errors": []}

        operation = create if method == "POST" else update
        return Response(200, self._run_collection([lambda p=p: operation(*p) for p in prepared], all_or_none,
                                                  {sobject for sobject, _ in typed}))

    def _collection_upsert(self, sobject: str, ext_name: str, body: Any) -> Response:
        ext = self._external_id_field(sobject, ext_name)
        records, all_or_none = self._collection_records(body)
        for record in records:
            if self._record_type(record) != sobject:
                raise ApiError(400, "INVALID_TYPE", f"All records must be of type {sobject} (the URI's sObject type)")
        prepared = [self._deserialize(sobject, r) for r in records]
        keys = [(v.get(ext.name) or "").casefold() for v in prepared]

        def upsert(values: dict) -> dict:
            key = values.get(ext.name)
            if key is None:
                raise RecordError("MISSING_ARGUMENT", f"{ext.name} not specified", [ext.name])
            if keys.count(key.casefold()) > 1:  # as SOAP and Bulk upsert answer a key repeated in one call
                raise RecordError("DUPLICATE_VALUE", f"Duplicate external id specified: {key}", [ext.name])
            existing_id = self._match_one(sobject, ext, key)
            existing = self._rows[sobject][existing_id] if existing_id else None
            if existing is None:
                self._lose_race(sobject, ext.name, values)
            result = {"id": self._save(sobject, values, existing), "success": True, "errors": []}
            return {**result, "created": existing is None} if self.upsert_results_say_created else result

        return Response(200, self._run_collection([lambda v=v: upsert(v) for v in prepared], all_or_none, {sobject}))

    def _collection_delete(self, arg: dict) -> Response:
        ids = [i for i in (arg.get("ids") or "").split(",") if i]
        if not ids:
            raise ApiError(400, "MISSING_ARGUMENT", "ids parameter is required")
        if len(ids) > COLLECTION_LIMIT:
            raise ApiError(400, "EXCEEDED_ID_LIMIT",
                           "record limit reached. cannot submit more than 200 records into this call")

        def delete(raw_id: str) -> dict:
            record_id = _normalize_id(raw_id)
            sobject = next((s for s, p in self._key_prefixes.items() if record_id and record_id.startswith(p)), None)
            if record_id is None or sobject is None:
                raise RecordError("MALFORMED_ID", f"invalid record id: {raw_id}")
            if record_id not in self._rows[sobject]:
                raise RecordError("ENTITY_IS_DELETED", "entity is deleted")
            self._delete(sobject, record_id)
            return {"id": record_id, "success": True, "errors": []}

        all_or_none = arg.get("allOrNone", "false").lower() == "true"
        sobjects = {s for i in ids for s, p in self._key_prefixes.items() if i.startswith(p)}
        return Response(200, self._run_collection([lambda i=i: delete(i) for i in ids], all_or_none, sobjects))

    def _collection_get(self, sobject: str, arg: dict, version: str) -> Response:
        fields = self._field_list(sobject, arg.get("fields"))
        if not fields:
            raise ApiError(400, "MISSING_ARGUMENT", "fields parameter is required")
        ids = [i for i in (arg.get("ids") or "").split(",") if i]
        if len(ids) > COLLECTION_LIMIT:
            raise ApiError(400, "EXCEEDED_ID_LIMIT",
                           "record limit reached. cannot submit more than 200 records into this call")
        rows = [self._rows[sobject].get(_normalize_id(i) or "") for i in ids]
        return Response(200, [self._render(version, sobject, row, fields) if row else None for row in rows])

    def _run_collection(self, operations: list[Callable[[], dict]], all_or_none: bool,
                        sobjects: set[str]) -> list[dict]:
        """Per-record results in order; with allOrNone any failure rolls back the lot."""
        if self._take_lock_storm(sobjects):
            locked = [{"statusCode": "UNABLE_TO_LOCK_ROW", "fields": [],
                       "message": f"unable to obtain exclusive access to this record or {len(operations)} records"}]
            return [{"success": False, "errors": locked} for _ in operations]
        mark = len(self._undo)
        results = []
        for operation in operations:
            try:
                results.append(operation())
            except RecordError as error:
                results.append({"success": False, "errors": error.errors})
        if all_or_none and not all(r["success"] for r in results):
            self._rollback(mark)
            rolled = [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": _ROLLED_BACK, "fields": []}]
            # A rolled-back create has no Id any more; an update or delete keeps its record's Id.
            results = [r if not r["success"] else
                       {**({"id": r["id"]} if self._exists(r["id"]) else {}), "success": False, "errors": rolled}
                       for r in results]
        return results

    # ---- Composite ---------------------------------------------------------------------------------

    def _composite(self, body: Any, version: str) -> Response:
        subrequests = body.get("compositeRequest") if isinstance(body, dict) else None
        if not isinstance(subrequests, list) or not subrequests:
            return _composite_error("JSON_PARSER_ERROR", "compositeRequest must be a non-empty array")
        if len(subrequests) > COMPOSITE_LIMIT:
            return _composite_error("LIMIT_EXCEEDED", "The request can’t contain more than 25 operations.")
        seen: set[str] = set()
        heavy = 0
        for sub in subrequests:
            ref = sub.get("referenceId") if isinstance(sub, dict) else None
            if not isinstance(ref, str) or not _REFERENCE_ID.match(ref) or ref in seen:
                return _composite_error("INVALID_INPUT", f"Invalid or duplicate referenceId: {ref!r}. A referenceId "
                                        "must be unique, start with a letter or a number, and contain only letters, "
                                        "numbers and underscores ('_').")
            seen.add(ref)
            if sub.get("method") not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                return _composite_error("INVALID_INPUT", f"Invalid method for referenceId {ref}: {sub.get('method')}")
            url = sub.get("url")
            api = _API_PATH.match(urlsplit(url).path) if isinstance(url, str) and url.startswith("/services/") else None
            if api is None:
                return _composite_error("INVALID_INPUT", f"The url for referenceId {ref} must start with "
                                        "/services/data/vXX.X/")
            headers = {name.lower() for name in (sub.get("httpHeaders") or {})}
            if headers & {"accept", "authorization", "content-type"}:
                return _composite_error("INVALID_INPUT", "A subrequest can't set the Accept, Authorization or "
                                        "Content-Type header")
            heavy += (api.group(2) or "").startswith(("/composite/sobjects", "/query"))
        if heavy > COMPOSITE_HEAVY_LIMIT:
            return _composite_error("LIMIT_EXCEEDED", "The request can’t contain more than 5 sObject Collections or "
                                    "query operations.")

        all_or_none = bool(body.get("allOrNone", False))
        if not all_or_none and _collated(body, subrequests, version):
            return self._composite_collated(subrequests)
        mark = len(self._undo)
        results: list[dict] = []
        done: dict[str, tuple[int, Any]] = {}
        for sub in subrequests:
            try:
                url = self._substitute(sub["url"], done)
                sub_body = self._substitute(sub.get("body"), done)
                parts = urlsplit(url)
                match = _API_PATH.match(parts.path)
                if not match:
                    raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
                response = self._dispatch(sub["method"], match.group(1), match.group(2) or "",
                                          parse_qs(parts.query, keep_blank_values=True), sub_body, top_level=False)
            except ApiError as error:
                response = error.response()
            headers = {"Location": response.headers["Location"]} if "Location" in response.headers else {}
            results.append({"body": response.body, "httpHeaders": headers, "httpStatusCode": response.status,
                            "referenceId": sub["referenceId"]})
            done[sub["referenceId"]] = (response.status, response.body)
            if all_or_none and _failed(response):
                self._rollback(mark)
                halted = [{"errorCode": "PROCESSING_HALTED", "message": _HALTED}]
                results = [r if r is results[-1] else {**r, "body": halted, "httpHeaders": {}, "httpStatusCode": 400}
                           for r in results]
                results += [{"body": halted, "httpHeaders": {}, "httpStatusCode": 400, "referenceId": s["referenceId"]}
                            for s in subrequests[len(results):]]
                break
        return Response(200, {"compositeResponse": results})

    def _composite_collated(self, subrequests: list[dict]) -> Response:
        """`collateSubrequests` (fact sheet §2.1): unrelated subrequests run in no guaranteed order. The emulator
        takes the least convenient one, last to first, so a client that needs its order and does not ask for it
        meets the consequences here; the answers come back in the request's order, as always."""
        results: dict[str, dict] = {}
        for sub in reversed(subrequests):
            try:
                parts = urlsplit(sub["url"])
                match = _API_PATH.match(parts.path)
                if not match:
                    raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
                response = self._dispatch(sub["method"], match.group(1), match.group(2) or "",
                                          parse_qs(parts.query, keep_blank_values=True), sub.get("body"),
                                          top_level=False)
            except ApiError as error:
                response = error.response()
            headers = {"Location": response.headers["Location"]} if "Location" in response.headers else {}
            results[sub["referenceId"]] = {"body": response.body, "httpHeaders": headers,
                                           "httpStatusCode": response.status, "referenceId": sub["referenceId"]}
        return Response(200, {"compositeResponse": [results[sub["referenceId"]] for sub in subrequests]})

    def _substitute(self, value: Any, done: dict[str, tuple[int, Any]]) -> Any:
        """Replace @{ref.path} references; a reference that is the whole string keeps the value's type."""
        if isinstance(value, str):
            whole = _REFERENCE.fullmatch(value)
            if whole:
                return self._dereference(whole.group(1), done)
            return _REFERENCE.sub(lambda m: _as_text(self._dereference(m.group(1), done)), value)
        if isinstance(value, list):
            return [self._substitute(v, done) for v in value]
        if isinstance(value, dict):
            return {k: self._substitute(v, done) for k, v in value.items()}
        return value

    def _dereference(self, expression: str, done: dict[str, tuple[int, Any]]) -> Any:
        match = _REFERENCE_EXPR.fullmatch(expression)
        ref = match.group(1) if match else expression
        halt = ApiError(400, "PROCESSING_HALTED", f"Invalid reference specified. No value for {expression} found in "
                        f"{ref}. Provided referenceId ('{expression}') must start with a letter or a number, and it "
                        "can contain only letters, numbers and underscores ('_').")
        if not match or ref not in done or done[ref][0] >= 400:
            raise halt
        value = done[ref][1]
        for name, index in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", match.group(2)):
            if name and isinstance(value, dict) and name in value:
                value = value[name]
            elif index and isinstance(value, list) and int(index) < len(value):
                value = value[int(index)]
            else:
                raise halt
        if value is None:
            raise halt
        return value

    # ---- query -------------------------------------------------------------------------------------

    def _query(self, text: str, kind: str, version: str) -> Response:
        if not self.like_supported and re.search(r"\bLIKE\b", text, re.IGNORECASE):
            raise ApiError(400, "MALFORMED_QUERY", "unexpected token: LIKE")  # a stricter SOQL dialect
        try:
            query = soql.parse(text)
            if self.max_query_conditions is not None and query.conditions() > self.max_query_conditions:
                raise soql.SoqlError("QUERY_TOO_COMPLICATED", "Query is either selecting too many fields or the "
                                                              "filter conditions are very complicated.")
            if self.query_timeout_conditions is not None and query.conditions() > self.query_timeout_conditions:
                raise soql.SoqlError("QUERY_TIMEOUT", "Your query request was running for too long.")
            sobject = self._objects_ci.get(query.sobject.lower())
            if sobject is None:
                raise soql.SoqlError("INVALID_TYPE", f"sObject type '{query.sobject}' is not supported. If you are "
                                     "attempting to use a custom object, be sure to append the '__c' after the entity "
                                     "name. Please reference your WSDL or the describe call for the appropriate names.")
            chains = {path: self._resolve(sobject, path) for path in query.paths()}
            where = {c.field: self._resolve(sobject, c.field) for c in query.comparisons()}
            for comparison in query.comparisons():
                _check_literal(where[comparison.field][-1], comparison)
            for path in (key.field for key in query.order_by):
                if not chains[path][-1].sortable:
                    raise soql.SoqlError("INVALID_FIELD", f"field '{chains[path][-1].name}' can not be sorted in a "
                                                          "query call")
            if query.aggregated:
                _check_aggregate(query, chains)
        except soql.SoqlError as error:
            raise ApiError(400, error.code, error.message) from None
        rows = list(self._rows[sobject].values())
        if kind == "queryAll":
            rows += self._recycle[sobject].values()
        rows = [r for r in rows if query.matches(lambda path, r=r: self._path_value(r, where[path]))]
        if query.aggregated:
            return Response(200, self._aggregate_result(query, rows, chains))
        rows = query.order(rows, lambda r, path: self._path_value(r, chains[path]))[:query.limit]
        if query.count:
            return Response(200, {"totalSize": len(rows), "done": True, "records": []})
        records = [self._project(version, sobject, row, [chains[path] for path in query.fields]) for row in rows]
        return Response(200, self._page(records, 0, kind, version))

    def _aggregate_result(self, query: soql.Query, rows: list[dict], chains: dict[str, list[Field]]) -> dict:
        """AggregateResult rows in one answer. A GROUP BY query cannot be continued with queryMore(), and a
        result over 2,000 rows must be narrowed by its filter (SOQL reference, "Considerations When Using
        GROUP BY"), so a larger result is refused rather than cut short. That page gives no error code: the
        code and message are the ones public client code quotes for a query that cannot be paged."""
        results = query.aggregate(rows, lambda row, path: self._path_value(row, chains[path]),
                                  lambda path, value: _rank(chains[path][-1], value))[:query.limit]
        if len(results) > PAGE_SIZE:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", "Aggregate query does not support queryMore(), use LIMIT to "
                                                     "restrict the results to a single batch")
        records = [{"attributes": {"type": "AggregateResult"}, **result} for result in results]
        return {"totalSize": len(records), "done": True, "records": records}

    def _page(self, records: list[dict], offset: int, kind: str, version: str) -> dict:
        page = {"totalSize": len(records), "done": offset + PAGE_SIZE >= len(records)}
        if not page["done"]:
            locator = next((k for k, v in self._cursors.items() if v is records), None)
            if locator is None:
                locator = _with_checksum("01g5g" + "".join(secrets.choice(string.ascii_letters + string.digits)
                                                           for _ in range(10)))
                self._cursors[locator] = records
            page["nextRecordsUrl"] = f"/services/data/v{version}/{kind}/{locator}-{offset + PAGE_SIZE}"
        page["records"] = records[offset:offset + PAGE_SIZE]
        return page

    def _query_page(self, cursor: str, kind: str, version: str) -> Response:
        locator, _, offset = cursor.rpartition("-")
        if locator not in self._cursors or not offset.isdigit():
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return Response(200, self._page(self._cursors[locator], int(offset), kind, version))

    def _resolve(self, sobject: str, path: str) -> list[Field]:
        """The fields along a (dotted) field path: relationship fields, then the selected field."""
        *relationships, name = path.split(".")
        chain, current = [], sobject
        for relationship in relationships:
            ref = self._relationships[current].get(relationship.lower())
            if ref is None:
                raise soql.SoqlError("INVALID_FIELD", f"Didn't understand relationship '{relationship}' in field path. "
                                     "If you are attempting to use a custom relationship, be sure to append the '__r' "
                                     "after the custom relationship name. Please reference your WSDL or the describe "
                                     "call for the appropriate names.")
            chain.append(ref)
            current = ref.reference_to or ""
        found = self._fields_ci[current].get(name.lower())
        if found is None:
            raise soql.SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{current}'. If you are "
                                 "attempting to use a custom field, be sure to append the '__c' after the custom field "
                                 "name. Please reference your WSDL or the describe call for the appropriate names.")
        return chain + [found]

    def _path_value(self, row: dict | None, chain: list[Field]) -> Any:
        for ref in chain[:-1]:
            row = self._rows[ref.reference_to or ""].get(row.get(ref.name) or "") if row else None
        return row.get(chain[-1].name) if row else None

    def _project(self, version: str, sobject: str, row: dict, chains: list[list[Field]]) -> dict:
        out = {"attributes": {"type": sobject, "url": self._url(version, sobject, row["Id"])}}
        for chain in chains:
            target, current = out, row
            for ref in chain[:-1]:
                parent = self._rows[ref.reference_to or ""].get(current.get(ref.name) or "")
                if parent is None:
                    target[ref.relationship or ""] = None
                    break
                nested = target.get(ref.relationship or "") or {
                    "attributes": {"type": ref.reference_to, "url": self._url(version, ref.reference_to or "",
                                                                              parent["Id"])}}
                target[ref.relationship or ""] = nested
                target, current = nested, parent
            else:
                target[chain[-1].name] = current.get(chain[-1].name)
        return out

    # ---- the store ---------------------------------------------------------------------------------

    def _seed_record_type(self, developer_name: str, label: str, person: bool) -> str:
        record_id = _with_checksum(self._key_prefixes["RecordType"] + "5g" + f"{next(self._ids):010d}")
        row = {f: None for f in self._schema["RecordType"]} | {
            "Id": record_id, "Name": label, "DeveloperName": developer_name, "SobjectType": "Account",
            "IsPersonType": person, "CreatedDate": self._timestamp(), "LastModifiedDate": self._timestamp(),
            "SystemModstamp": self._timestamp(),
            "IsDeleted": False}
        self._set_live("RecordType", record_id, row)
        self._undo.clear()
        return record_id

    def _lose_race(self, sobject: str, field_name: str, values: dict[str, Any]) -> None:
        """When a race is armed for `sobject`: the other client's upsert of the same new key commits first (its
        own transaction: kept whatever this request does), and this one is refused."""
        race = next((r for r in self._races if r[0] > 0 and r[1] in (None, sobject)), None)
        if race is None:
            return
        race[0] -= 1
        mark = len(self._undo)
        winner = self._save(sobject, dict(values), None)
        del self._undo[mark:]
        if (sobject, field_name) not in self._unique:
            return  # not a Unique field: nothing refuses this create, and the key now names two records
        raise RecordError("DUPLICATE_VALUE", f"duplicate value found: {field_name} duplicates value on record with "
                          f"id: {winner}")

    def _take_lock_storm(self, sobjects: set[str]) -> bool:
        for storm in self._lock_storms:
            if storm[0] > 0 and (storm[1] is None or storm[1] in sobjects):
                storm[0] -= 1
                return True
        return False

    def _timestamp(self) -> str:
        """Now on the org's clock, as system date fields carry it."""
        return _format_datetime(self._clock())

    def _exists(self, record_id: str) -> bool:
        return any(record_id in rows for rows in self._rows.values())

    def _set_live(self, sobject: str, record_id: str, row: dict | None) -> None:
        """The one place live rows change: keeps the unique index and the undo log."""
        old = self._rows[sobject].get(record_id)
        self._undo.append((sobject, record_id, old, self._recycle[sobject].get(record_id)))
        for (name, field_name), index in self._unique.items():
            if name == sobject:
                if old and old.get(field_name) is not None:
                    index.pop(old[field_name].casefold(), None)
                if row and row.get(field_name) is not None:
                    index[row[field_name].casefold()] = record_id
        if row is None:
            self._rows[sobject].pop(record_id, None)
        else:
            self._rows[sobject][record_id] = row

    def _rollback(self, mark: int) -> None:
        while len(self._undo) > mark:
            sobject, record_id, live, recycled = self._undo.pop()
            self._set_live(sobject, record_id, live)
            self._undo.pop()  # _set_live logged the restore itself
            if recycled is None:
                self._recycle[sobject].pop(record_id, None)
            else:
                self._recycle[sobject][record_id] = recycled

    def _delete(self, sobject: str, record_id: str) -> None:
        """Delete a record: master-detail children go with it, lookups to it are cleared."""
        for child, fields in self._schema.items():
            for ref in fields.values():
                if ref.reference_to != sobject:
                    continue
                for child_id, child_row in list(self._rows[child].items()):
                    if child_row.get(ref.name) == record_id:
                        if ref.master_detail:
                            self._delete(child, child_id)
                        else:
                            self._set_live(child, child_id,
                                           {**child_row, ref.name: None, "SystemModstamp": self._timestamp()})
        row = self._rows[sobject][record_id]
        self._set_live(sobject, record_id, None)
        self._recycle[sobject][record_id] = {**row, "IsDeleted": True}

    def _deserialize(self, sobject: str, record: dict) -> dict[str, Any]:
        """Field names and JSON values to typed values; errors here fail the whole request, as Salesforce
        deserializes the body before it saves anything."""
        values: dict[str, Any] = {}
        for key, value in record.items():
            if key == "attributes":
                continue
            found = self._fields_ci[sobject].get(key.lower())
            if found is not None:
                values[found.name] = _coerce(found, value)
                continue
            ref = self._relationships[sobject].get(key.lower())
            if ref is None:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {sobject}")
            if value is not None and not isinstance(value, dict):
                raise ApiError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of reference from {key}")
            target = ref.reference_to or ""
            for name in (value or {}):
                target_field = self._fields_ci[target].get(name.lower())
                if name != "attributes" and (target_field is None or not target_field.external_id):
                    raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {target}")
            values[ref.relationship or ""] = value
        return values

    def _save(self, sobject: str, values: dict[str, Any], existing: dict | None) -> str:
        """Validate and write one record (create when `existing` is None); raises RecordError."""
        schema = self._schema[sobject]
        values = self._resolve_foreign_keys(sobject, values)
        for name, value in values.items():
            if value is not None and schema[name].kind == "reference":
                values[name] = self._check_reference(sobject, schema[name], value)
        if sobject == "Account" and existing is None and self.person_accounts:
            values.setdefault("RecordTypeId", self._business_record_type_id)
        merged = {**(existing or {name: None for name in schema}), **values}
        person = self._is_person(merged)

        locked = [n for n in values if schema[n].read_only or (n == "Name" and person and sobject == "Account")
                  or (existing and schema[n].master_detail and values[n] != existing[n])]
        if locked:
            raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE",
                              f"Unable to create/update fields: {', '.join(locked)}. Please check the security "
                              "settings of this field and verify that it is read/write for your profile or "
                              "permission set.", locked)
        if existing and "RecordTypeId" in values and person != self._is_person(existing) and len(values) > 1:
            raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE",
                              "can't combine a person account record type change with any other field update")
        misplaced = [n for n, v in values.items() if schema[n].person and v is not None and not person]
        if misplaced:
            raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE",
                              f"Account: bad field names on insert/update call: {', '.join(misplaced)}", misplaced)
        required = [n for n, f in schema.items() if f.required] + (
            (["LastName"] if person else ["Name"]) if sobject == "Account" else [])
        missing = [n for n in required if merged.get(n) is None]
        if missing:
            raise RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing)
        errors = [e for n, v in values.items() if v is not None for e in _value_errors(schema[n], v)]
        if errors:
            raise RecordError(errors=errors)

        now = self._timestamp()
        if existing is None:
            prefix = self._key_prefixes[sobject]
            merged.update(Id=_with_checksum(f"{prefix}5g{next(self._ids):010d}"), CreatedDate=now, IsDeleted=False)
            if sobject in self._auto_number_formats:
                merged["Name"] = self._auto_number_formats[sobject].format(next(self._auto_numbers[sobject]))
        merged.update(LastModifiedDate=now, SystemModstamp=now)
        if sobject == "Account" and self.person_accounts:
            merged["IsPersonAccount"] = person
            if person:
                merged["Name"] = " ".join(filter(None, (merged.get("FirstName"), merged.get("LastName"))))
        for rule_object, predicate, message, code in self._rules:
            if rule_object == sobject and predicate(dict(merged)):
                raise RecordError(code, message)
        for (owner_object, name), index in self._unique.items():
            owner = index.get((merged.get(name) or "").casefold(), merged["Id"])
            if owner_object == sobject and merged.get(name) is not None and owner != merged["Id"]:
                raise RecordError("DUPLICATE_VALUE", f"duplicate value found: {name} duplicates value on record "
                                  f"with id: {owner}")
        self._set_live(sobject, merged["Id"], merged)
        return merged["Id"]

    def _resolve_foreign_keys(self, sobject: str, values: dict[str, Any]) -> dict[str, Any]:
        """Turn `"<Rel>__r": {"<ExtId>": value}` into the lookup field's Id."""
        resolved = {}
        for name, value in values.items():
            ref = self._relationships[sobject].get(name.lower())
            if ref is None or name in self._schema[sobject]:
                resolved[name] = value
                continue
            if value is None:
                resolved[ref.name] = None
                continue
            keys = [k for k in value if k != "attributes"]
            if len(keys) != 1:
                raise RecordError("INVALID_FIELD", "More than 1 field provided in an external foreign key reference"
                                  if keys else f"No external ID field provided for {name}")
            target = ref.reference_to or ""
            ext = self._fields_ci[target][keys[0].lower()]
            key = value[keys[0]]
            parent = self._match_one(target, ext, _as_text(key)) if key not in (None, "") else None
            if parent is None:
                raise RecordError("INVALID_FIELD", f"Foreign key external ID: {'' if key is None else key} not found "
                                  f"for field {ext.name} in entity {target}")
            resolved[ref.name] = parent
        return resolved

    def _check_reference(self, sobject: str, ref: Field, value: str) -> str:
        target = ref.reference_to or ""
        record_id = _normalize_id(value)
        if record_id is None or not record_id.startswith(self._key_prefixes[target]):
            raise RecordError("MALFORMED_ID", f"{_label(ref)}: id value of incorrect type: {value}", [ref.name])
        row = self._rows[target].get(record_id)
        if ref.name == "RecordTypeId" and (row is None or row["SobjectType"] != sobject):
            raise RecordError("INVALID_CROSS_REFERENCE_KEY",
                              f"Record Type ID: this ID value isn't valid for the user: {value}", [ref.name])
        if row is None:
            raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [ref.name])
        return record_id

    def _is_person(self, row: dict) -> bool:
        record_type = self._rows["RecordType"].get(row.get("RecordTypeId") or "")
        return bool(record_type and record_type["IsPersonType"])


# ---- helpers --------------------------------------------------------------------------------------


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ApiError(405, "METHOD_NOT_ALLOWED",
                       f"HTTP Method '{method}' not allowed. Allowed are {','.join(allowed)}")


def _as_record(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_body(raw: bytes) -> Any:
    try:  # NaN and Infinity are not JSON: Salesforce's parser refuses them, as Python's would not by default
        return json.loads(raw, parse_constant=_no_constant) if raw.strip() else None
    except ValueError:  # not JSON, or not UTF-8
        raise ApiError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON") from None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _collated(body: dict, subrequests: list[dict], version: str) -> bool:
    """Whether a /composite runs its subrequests collated: `collateSubrequests`, true by default from v49 (false
    before). Subrequests that refer to one another (`@{ref}`) or carry headers keep their order here: the
    emulator reorders only what is plainly unrelated."""
    collate = body.get("collateSubrequests")
    if collate is None:
        collate = float(version) >= 49.0
    if not collate:
        return False
    return not any(sub.get("httpHeaders") or _REFERENCE.search(json.dumps(sub)) for sub in subrequests)


def _failed(response: Response) -> bool:
    """A subrequest failure for allOrNone: an error status, or a Collections result with a failed record."""
    if response.status >= 400:
        return True
    body = response.body
    return isinstance(body, list) and any(isinstance(r, dict) and r.get("success") is False for r in body)


def _composite_error(code: str, message: str) -> Response:
    """A whole /composite request refused: 400 carrying one result without a referenceId (as Salesforce answers)."""
    return Response(400, {"compositeResponse": [{"body": [{"errorCode": code, "message": message}], "httpHeaders": {},
                                                 "httpStatusCode": 400, "referenceId": None}]})


def _soap_fault(code: str, message: str) -> Response:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{_SOAP_ENVELOPE}"'
        ' xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<soapenv:Body><soapenv:Fault><faultcode>sf:{code}</faultcode><faultstring>{code}: {escape(message)}"
        f'</faultstring><detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>{code}</sf:exceptionCode>'
        f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage></sf:LoginFault></detail></soapenv:Fault>"
        "</soapenv:Body></soapenv:Envelope>")
    return Response(500, body, content_type="text/xml; charset=utf-8")


def _request_body(request: Request) -> Any:
    if request.path == "/services/oauth2/token":
        return request.form()
    try:
        return json.loads(request.body) if request.body.strip() else None
    except ValueError:
        return request.body.decode(errors="replace")


def _coerce(f: Field, value: Any) -> Any:
    """A JSON value as the field stores it; raises ApiError(JSON_PARSER_ERROR) like Salesforce's deserializer."""
    def refuse() -> ApiError:
        return ApiError(400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of {f.kind} from value {value!r} "
                        f"or request may be missing a required field ({f.name})")

    if value is None:
        return None
    if f.kind in _TEXT_KINDS:
        if isinstance(value, (dict, list)):
            raise refuse()
        text = _as_text(value)
        return text or None  # Salesforce stores an empty string as null
    if f.kind in _NUMBER_KINDS:
        if value == "":
            return None
        if isinstance(value, (bool, dict, list)):
            raise refuse()
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise refuse() from None
        if not number.is_finite():
            raise refuse()
        # More places than the field's scale are rounded half-up, as Salesforce does for number fields. A number
        # too large to round in 28 digits is far out of any field's range: refused NUMBER_OUTSIDE_VALID_RANGE later.
        try:
            rounded = number.quantize(Decimal(1).scaleb(-f.scale), rounding=ROUND_HALF_UP)
        except InvalidOperation:
            return float(number)
        return int(rounded) if f.kind == "int" else float(rounded)
    if f.kind == "datetime":
        if not isinstance(value, str):
            raise refuse()
        try:
            return _format_datetime(soql.parse_datetime(value))
        except ValueError:
            raise refuse() from None
    if f.kind == "date":  # "YYYY-MM-DD", stored and returned as such
        if not isinstance(value, str):
            raise refuse()
        try:
            return dt.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            raise refuse() from None
    if not isinstance(value, bool):
        raise refuse()
    return value


def _value_errors(f: Field, value: Any) -> list[dict]:
    """Per-record problems with a field's new value."""
    def error(code: str, message: str) -> list[dict]:
        return [{"statusCode": code, "message": f"{_label(f)}: {message}", "fields": [f.name]}]

    if f.kind in _LENGTH_KINDS and len(value) > f.length:
        return error("STRING_TOO_LONG", f"data value too large: {value} (max length={f.length})")
    if f.kind == "email" and not _EMAIL.match(value):
        return error("INVALID_EMAIL_ADDRESS", f"invalid email address: {value}")
    if f.kind == "picklist" and value not in f.values:
        return error("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", f"bad value for restricted picklist field: {value}")
    if f.kind in _NUMBER_KINDS and abs(value) >= 10 ** f.length:
        return error("NUMBER_OUTSIDE_VALID_RANGE", f"value outside of valid range on numeric field: {value}")
    return []


_LITERAL_TYPES = {"boolean": (bool, "boolean"), "currency": (Decimal, "double"), "number": (Decimal, "double"),
                  "percent": (Decimal, "double"), "int": (Decimal, "int"), "datetime": (dt.datetime, "dateTime")}


def _check_aggregate(query: soql.Query, chains: dict[str, list[Field]]) -> None:
    """What the org's schema allows in an aggregate query (SOQL reference, "Support for Field Types in Aggregate
    Functions"): SUM of numbers only, MIN and MAX of anything but booleans, DAY_ONLY of date-times, and
    GROUP BY only on groupable fields."""
    for item in query.selected:
        f = chains[item.field][-1] if item.field else None
        if f is not None and ((item.function == "SUM" and f.kind not in _NUMBER_KINDS)
                              or (item.function in ("MIN", "MAX") and f.kind == "boolean")):
            raise soql.SoqlError("INVALID_FIELD", f"field {f.name} does not support aggregate operator "
                                                  f"{item.function}")
    for key in query.group_by:
        f = chains[key.field][-1]
        if key.function == "DAY_ONLY" and f.kind != "datetime":
            raise soql.SoqlError("INVALID_FIELD", f"DAY_ONLY needs a dateTime field, not {f.kind}: {f.name}")
        if key.function is None and not _groupable(f):
            raise soql.SoqlError("INVALID_FIELD", f"field '{f.name}' can not be grouped in a query call")


def _rank(f: Field, value: Any) -> Any:
    """The order MIN and MAX pick in: a picklist's own value order (SOQL reference, "Aggregate Functions"),
    instants for date-times, text without regard to case."""
    if f.kind == "picklist":
        return f.values.index(value) if value in f.values else len(f.values)
    if f.kind == "datetime":
        return soql.parse_datetime(value)
    return value.casefold() if isinstance(value, str) else value


def _check_literal(f: Field, comparison: soql.Comparison) -> None:
    """Salesforce refuses a filter whose literal does not fit the field's type (a date literal on a DateTime too)."""
    expected, type_name = _LITERAL_TYPES.get(f.kind, (str, "string"))
    literals = comparison.value if comparison.op in ("IN", "NOT IN") else (
        () if comparison.op == "LIKE" else (comparison.value,))
    for literal in literals:
        if literal is not None and not isinstance(literal, expected):
            quoted = "be" if expected is str else "not be"
            raise soql.SoqlError("INVALID_FIELD", f"value of filter criterion for field '{f.name}' must be of type "
                                 f"{type_name} and should {quoted} enclosed in quotes")
    if comparison.op == "LIKE" and f.kind not in _TEXT_KINDS:
        raise soql.SoqlError("INVALID_FIELD", f"invalid operator on {f.kind} field: {f.name}")
