"""An emulator of the Lightspeed Retail R-Series API V3 (Sale reads, OAuth, rate limits) on loopback HTTP.

It follows the fact sheet `shared/reference/lightspeed-api.md` (cited as §n) and the real bodies in
`shared/reference/samples/lightspeed/`. Where the fact sheet says a point is unconfirmed, the emulator
takes the PESSIMISTIC reading, so clients are tested against the worst case:

* after completion, line edits and voids move only `updatetime`; `timeStamp` stays pinned at the
  completion time, and `completeTime` never moves (§9);
* a refund is a new sale and leaves every timestamp of the original alone (§9);
* filtering on `updatetime` works, but `reject_updatetime_filter = True` turns it into a 400 (§2); sorting
  on it, ascending or descending (`sort=-updatetime`, §2 [S9]), works either way;
* whether the live API spells the Sale's last update `updatetime` (the Sale reference) or `updateTime` (the 2016
  tutorial) is unconfirmed (§4.6), so the emulator speaks either: `updatetime` by default, and with
  `updatetime_spelling = "updateTime"` the other throughout, in every Sale it returns and as the field it filters
  and sorts on (`updateTime=><,a,b`, `sort=-updateTime`); the spelling not in use is then an unknown field;
* a customer's Contact edits (email, phones, address) move only the Contact's `timeStamp`, not the Customer's
  (§5: whether they move the Customer's is not documented); a loaded relation is searchable one level deep,
  e.g. `Customer.json?Contact.timeStamp=...&load_relations=["Contact"]`, and not without loading it (§2);
* an unknown query parameter (e.g. the spelling of the update time the account does not use, §4.6) is a 400,
  not ignored;
* a `+` in a timestamp filter not sent as `%2B` decodes as a space and is a 400 (§2);
* a full last page still carries a `next` URL, whose page is empty and has no `Sale` key (§3);
* `drop_next` drops the response AFTER the request took effect, as when a response is lost on the wire;
* every response carries an HTTP `Date` from the emulator's own clock (`clock=`), which may differ from the
  host's, as Lightspeed's may.

One server serves several accounts, as the real cloud does (one API base URL, one token URL): the emulator is
its first account, and `add_account` registers more. Each `LightspeedAccount` has its own data, ids, OAuth
client, rotating tokens, leaky bucket and burst window (§6: per account + API client), faults and request log.
A refresh token names its account; an access token only reaches the account in its `acct` claim (§1, §7).

Only reads are modelled; the merchant's side (sales, edits, refunds) is driven from Python.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import operator
import re
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote, urlencode

from lspos_sync.emulators.http import DropConnection, EmulatorServer, Request, Response, loopback_tls

TOKEN_PATH = "/auth/oauth/token"
_ROUTE = re.compile(
    r"/API/V3/Account(?:/(?P<acct>[^/]+?)(?:/(?P<kind>[A-Za-z]+)(?:/(?P<id>[^/]+?))?)?)?(?P<ext>\.json)?")
# §4.6: the Sale reference's spelling, then the 2016 tutorial's (`LightspeedAccount.updatetime_spelling`)
_UPDATETIME_SPELLINGS = ("updatetime", "updateTime")
_TIME_FIELDS = frozenset({"timeStamp", *_UPDATETIME_SPELLINGS, "completeTime", "createTime"})
_CONTROL = frozenset({"limit", "sort", "load_relations", "after", "before", "archived", "count"})
COUNT_COST = 10  # §2: `count=1` costs 10 drips
# §1: the scopes that read an entity (employee:register_read "gives read access to sales history", employee:register
# "create plus read", employee:customers_read "reads customers", employee:all everything; SaleVoid needs
# employee:admin_void_sale). A token whose grant has none of them is refused 403. The sheet names no scope for
# the other entities, so they are open to any token.
_SCOPES = {"Sale": frozenset({"employee:register_read", "employee:register", "employee:all"}),
           "Customer": frozenset({"employee:customers_read", "employee:all"}),
           "SaleVoid": frozenset({"employee:admin_void_sale", "employee:all"})}
_OPS = frozenset({">", ">=", "<", "<=", "!=", "><", "IN", "~", "!~", "="})
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class _Kind:
    id_field: str
    filterable: frozenset[str]
    sortable: tuple[str, ...]
    relations: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # name -> (to_many, under a to-many)


_KINDS = {
    "Sale": _Kind(
        "saleID",
        frozenset({"saleID", "timeStamp", "updatetime", "completeTime", "createTime", "completed", "voided",
                   "archived", "customerID", "shopID", "ticketNumber", "registerID", "employeeID"}),
        ("saleID", "timeStamp", "completeTime", "updatetime"),  # §2 [S9]
        {"SaleLines": (True, False), "SaleLines.Item": (False, True), "SalePayments": (True, False),
         "SalePayments.PaymentType": (False, True), "Customer": (False, False), "Customer.Contact": (False, False)},
    ),
    "Customer": _Kind("customerID",
                      frozenset({"customerID", "firstName", "lastName", "archived", "timeStamp", "createTime"}),
                      ("customerID", "timeStamp", "firstName", "lastName"), {"Contact": (False, False)}),
    "Shop": _Kind("shopID", frozenset({"shopID", "name", "timeZone", "archived"}), ("shopID",)),
    "Category": _Kind("categoryID", frozenset({"categoryID", "name", "parentID", "archived"}), ("categoryID",)),
    "Item": _Kind("itemID", frozenset({"itemID", "description", "customSku", "systemSku", "categoryID", "archived",
                                       "timeStamp", "createTime"}), ("itemID", "timeStamp")),
    "PaymentType": _Kind("paymentTypeID", frozenset({"paymentTypeID", "name", "type", "archived"}), ("paymentTypeID",)),
    # §9: a void writes a SaleVoid row (reason, saleID, ...); sortable by saleVoidID [S13-SaleVoid]
    "SaleVoid": _Kind("saleVoidID", frozenset({"saleVoidID", "saleID", "createTime", "shopID", "employeeID"}),
                      ("saleVoidID",)),
}
# The Sale entity as an account that spells its last update one way or the other names its fields.
_SALE_KINDS = {spelling: replace(
    _KINDS["Sale"], filterable=frozenset(spelling if f == "updatetime" else f for f in _KINDS["Sale"].filterable),
    sortable=tuple(spelling if f == "updatetime" else f for f in _KINDS["Sale"].sortable))
    for spelling in _UPDATETIME_SPELLINGS}
# A loaded relation's own fields can be searched, one level deep (§2 [S4]): `Contact.timeStamp=><,...`.
_RELATION_FIELD = re.compile(r"(?P<relation>[A-Za-z]+)\.(?P<field>[A-Za-z]+)")
_COMPARE = {"=": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt,
            "<=": operator.le}


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, list[str]]
    status: int  # 0 when the connection was dropped
    at: datetime


@dataclass
class _Fault:
    remaining: int
    path_suffix: str
    status: int = 0
    retry_after: int | None = None
    only_with: str | None = None  # a query parameter the request must carry
    message: str = "Injected failure"


@dataclass
class _Grant:
    """One successful refresh grant; `parent` is the refresh token it was minted from."""
    access_token: str
    refresh_token: str
    parent: str
    expires_at: datetime
    scope: str = ""
    used: bool = False


@dataclass
class _Line:
    id: int
    sale_id: int
    shop_id: int
    item_id: int
    quantity: int
    unit_price: Decimal
    discount: Decimal
    tax1_rate: Decimal
    tax2_rate: Decimal
    parent_id: int
    created: datetime
    stamp: datetime

    def calcs(self) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
        """(subtotal, discount, tax1, tax2, total), unrounded like the real line calcs (§4.2)."""
        subtotal = self.quantity * self.unit_price
        taxable = subtotal - self.discount
        tax1, tax2 = taxable * self.tax1_rate, taxable * self.tax2_rate
        return subtotal, self.discount, tax1, tax2, taxable + tax1 + tax2


@dataclass
class _Payment:
    id: int
    type_id: int
    amount: Decimal
    archived: bool
    created: datetime


@dataclass
class _Sale:
    id: int
    shop_id: int
    customer_id: int
    ticket: str
    created: datetime
    stamp: datetime
    updated: datetime
    completed_at: datetime | None = None
    voided: bool = False
    lines: list[_Line] = field(default_factory=list)
    payments: list[_Payment] = field(default_factory=list)
    corrupted: dict[str, Any] = field(default_factory=dict)  # raw values served instead of the computed ones


def _ts(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _num(value: Decimal | float | int) -> str:
    text = format(Decimal(str(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _one_or_many(items: list[dict]) -> dict | list[dict]:
    # §4.1: a lone child comes back as an object, several as a list
    return items[0] if len(items) == 1 else items


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)  # 3.11 accepts +00:00, -0400 and Z (§2)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _coerce(name: str, text: str) -> Any:
    """A field's string value as something that compares correctly; ValueError when it cannot."""
    if name in _TIME_FIELDS:
        return _parse_time(text)
    if name.endswith("ID"):
        return int(text)
    return text.lower()


def _rank(name: str, text: str | None) -> tuple[int, Any]:
    # an absent value (completeTime of an open sale) sorts first, as NULL does in ascending SQL
    return (0, "") if text is None else (1, _coerce(name, text))


def _error_body(status: int, message: str, error_class: str = "Exception") -> dict[str, str]:
    # §4.8: errors are JSON with string fields
    return {"httpCode": str(status), "httpMessage": HTTPStatus(status).phrase, "message": message,
            "errorClass": error_class}


def _oauth_error(status: int, error: str, description: str) -> Response:
    return Response(status, {"error": error, "error_description": description, "message": description})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _token_form(request: Request) -> dict[str, str] | None:
    """A token request's fields, from a form or a JSON body; None when the JSON is not an object."""
    if "json" not in request.headers.get("content-type", ""):
        return request.form()
    try:
        body = request.json()
    except ValueError:
        return None
    return {k: str(v) for k, v in body.items()} if isinstance(body, dict) else None


class LightspeedAccount:
    """One Lightspeed account and the OAuth client authorised on it: its data, tokens, bucket, faults and the
    requests it received. The emulator (`LightspeedEmulator`) routes each request to one of these."""

    def __init__(self, cloud: LightspeedEmulator, account_id: str, client_id: str, client_secret: str,
                 refresh_token: str, bucket_size: float, drip_rate: float, burst_limit: int,
                 access_token_ttl: int) -> None:
        self._cloud = cloud
        self.account_id, self.client_id, self.client_secret = account_id, client_id, client_secret
        self.initial_refresh_token = refresh_token
        self.bucket_size, self.drip_rate, self.burst_limit = bucket_size, drip_rate, burst_limit
        self.access_token_ttl = access_token_ttl
        # The scopes the app was authorised with (docs/setup.md asks for these three); each access token carries
        # those of its grant, and SaleVoid needs employee:admin_void_sale (fact sheet, endpoint table).
        self.scopes = "employee:register_read employee:customers_read employee:admin_void_sale"
        self.reject_updatetime_filter = False  # a 400 for a filter on the update time, in this account's spelling
        # A 400 for a filter on a SaleVoid's createTime: the sheet documents the feed as sortable by saleVoidID and
        # recommends polling it by ID (§9); filtering it on a time is nowhere shown (§2).
        self.reject_void_createtime_filter = False
        self.updatetime_spelling = "updatetime"
        # Faults and hooks for tests: Sale pages larger than this fail with `heavy_page_status` (§2: relations "can
        # cause 500s or timeouts"; §4.8 lists 500, 502 and 503 among the codes used, not 504); a callback after
        # each request.
        self.max_sale_page: int | None = None
        self.heavy_page_status = 500
        # §9 leaves open which Sale timestamp a void moves; False models a void that moves none of them.
        self.void_moves_updatetime = True
        self.after_request: Callable[[RequestRecord], None] | None = None
        self.requests: list[RequestRecord] = []
        self.refresh_count = 0
        self._clock, self._lock = cloud._clock, cloud._lock
        # valid refresh tokens, oldest first, each with when it was issued (on the emulator's clock)
        self._refresh_tokens: dict[str, datetime] = {refresh_token: self._now()}
        # §7: "unused refresh tokens expire after 30 days"; None: never
        self.refresh_token_lifetime: timedelta | None = timedelta(days=30)
        # §7: a refresh "can be retried ... (at most 5 attempts per minute per connection)", and Lightspeed
        # "rate-limits or blocks clients that refresh excessively": more token requests than this in 60 s (on the
        # emulator's clock, as token expiry) are answered 429 (the status is the emulator's reading); None: no limit
        self.max_token_requests_per_minute: int | None = 5
        self._token_requests: list[datetime] = []  # this account's recent token requests
        self._refresh_history = {refresh_token}  # every refresh token this account ever had, to route old ones
        self.issued: list[str] = []  # every access and refresh token minted, for tests that look for leaks
        self._access: dict[str, _Grant] = {}
        self._minted_from: dict[str, _Grant] = {}  # refresh token -> the grant it last produced
        self._level, self._level_at = 0.0, time.monotonic()
        self._window, self._burst = -1, 0
        self._fails: list[_Fault] = []
        self._drops: list[_Fault] = []
        self._cuts: list[_Fault] = []  # 200 answers whose JSON body is cut off half-way
        self._stuck: list[_Fault] = []  # list pages whose `next` is the page just read
        self._ids: dict[str, int] = {}
        self._rows: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in _KINDS if k != "Sale"}
        self._sales: dict[int, _Sale] = {}
        self._lines: dict[int, _Line] = {}

    # ------------------------------------------------------------------ configuration
    @property
    def updatetime_spelling(self) -> str:
        """How this account spells the Sale's last update, in the Sales it returns and as a filter or sort field:
        `updatetime` (the Sale reference) or `updateTime` (the 2016 tutorial). Which one the live API uses is
        unconfirmed (§4.6); the other spelling is answered as any unknown field is (400)."""
        return self._updatetime_spelling

    @updatetime_spelling.setter
    def updatetime_spelling(self, spelling: str) -> None:
        if spelling not in _UPDATETIME_SPELLINGS:
            raise ValueError(f"updatetime_spelling is one of {', '.join(_UPDATETIME_SPELLINGS)}, not {spelling!r}")
        self._updatetime_spelling = spelling

    def _kind(self, name: str) -> _Kind | None:
        """An entity's fields as this account names them."""
        return _SALE_KINDS[self._updatetime_spelling] if name == "Sale" else _KINDS.get(name)

    @property
    def api_url(self) -> str:
        return f"{self._cloud._base_url}/API/V3"

    @property
    def token_url(self) -> str:
        return f"{self._cloud._base_url}{TOKEN_PATH}"

    def env(self) -> dict[str, str]:
        """The variables of a single-account configuration for this account."""
        return {
            "LIGHTSPEED_ACCOUNT_ID": self.account_id,
            "LIGHTSPEED_CLIENT_ID": self.client_id,
            "LIGHTSPEED_CLIENT_SECRET": self.client_secret,
            "LIGHTSPEED_REFRESH_TOKEN": self.initial_refresh_token,
            "LIGHTSPEED_API_URL": self.api_url,
            "LIGHTSPEED_TOKEN_URL": self.token_url,
        }

    def account_env(self) -> dict[str, str]:
        """This account's own variables in a multi-account configuration (`LIGHTSPEED_ACCOUNTS`)."""
        prefix = f"LIGHTSPEED_ACCOUNT_{self.account_id}_"
        return {f"{prefix}CLIENT_ID": self.client_id, f"{prefix}CLIENT_SECRET": self.client_secret,
                f"{prefix}REFRESH_TOKEN": self.initial_refresh_token}

    # ------------------------------------------------------------------ seeding
    def _new_id(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    def _now(self, at: datetime | None = None) -> datetime:
        value = at or self._clock()
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def add_shop(self, name: str, time_zone: str = "US/Eastern") -> int:
        with self._lock:
            shop_id = self._new_id("Shop")
            self._rows["Shop"][shop_id] = {
                "shopID": str(shop_id), "name": name, "serviceRate": "0", "timeZone": time_zone, "taxLabor": "false",
                "labelTitle": "Shop Name", "labelMsrp": "false", "archived": "false", "timeStamp": _ts(self._now()),
                "companyRegistrationNumber": "", "vatNumber": "", "zebraBrowserPrint": "false", "contactID": "0",
                "taxCategoryID": "1", "receiptSetupID": "1", "vendorID": "0", "ccGatewayID": "0",
                "gatewayConfigID": "0", "priceLevelID": "1",
            }
            return shop_id

    def rename_shop(self, shop_id: int, name: str, at: datetime | None = None) -> None:
        """The merchant renames a shop: the Shop row changes (its timeStamp moves), none of its sales does."""
        with self._lock:
            self._rows["Shop"][shop_id].update(name=name, timeStamp=_ts(self._now(at)))

    def add_category(self, name: str) -> int:
        with self._lock:
            category_id = self._new_id("Category")
            now = _ts(self._now())
            self._rows["Category"][category_id] = {
                "categoryID": str(category_id), "name": name, "nodeDepth": "0", "fullPathName": name,
                "leftNode": "0", "rightNode": "0", "parentID": "0", "archived": "false",
                "createTime": now, "timeStamp": now,
            }
            return category_id

    def add_payment_type(self, name: str, type: str = "credit card") -> int:  # noqa: A002 - the documented field name
        with self._lock:
            type_id = self._new_id("PaymentType")
            self._rows["PaymentType"][type_id] = {
                "paymentTypeID": str(type_id), "name": name, "requireCustomer": "false", "archived": "false",
                "internalReserved": "false", "type": type, "refundAsPaymentTypeID": "0",
            }
            return type_id

    def add_item(self, description: str, custom_sku: str = "", system_sku: str | None = None,
                 category_id: int | None = None) -> int:
        with self._lock:
            item_id = self._new_id("Item")
            now = _ts(self._now())
            self._rows["Item"][item_id] = {
                "itemID": str(item_id), "systemSku": system_sku or f"21{item_id:010d}", "defaultCost": "0",
                "avgCost": "0", "discountable": "true", "tax": "true", "archived": "false", "itemType": "default",
                "description": description, "modelYear": "0", "upc": "", "ean": "", "customSku": custom_sku,
                "manufacturerSku": "", "createTime": now, "timeStamp": now, "categoryID": str(category_id or 0),
                "taxClassID": "1", "departmentID": "0", "itemMatrixID": "0", "manufacturerID": "0",
                "seasonID": "0", "defaultVendorID": "0",
            }
            return item_id

    def add_customer(self, first_name: str, last_name: str, email: str | None = None,
                     phones: dict[str, str] | None = None, dob: datetime | None = None,
                     address: dict[str, str] | None = None, at: datetime | None = None) -> int:
        """`dob` is stored as Lightspeed does, a moment in UTC (§4.4); `address` takes ContactAddress keys
        (address1, address2, city, state, zip, country)."""
        with self._lock:
            customer_id = self._new_id("Customer")
            now = _ts(self._now(at))
            phone_rows = [{"number": number, "useType": use} for use, number in (phones or {}).items()]
            self._rows["Customer"][customer_id] = {
                "customerID": str(customer_id), "firstName": first_name, "lastName": last_name, "title": "",
                "company": "", "companyRegistrationNumber": "", "vatNumber": "", "archived": "false",
                "createTime": now, "timeStamp": now, "contactID": str(customer_id), "creditAccountID": "0",
                "customerTypeID": "0", "discountID": "0", "employeeID": "0", "noteID": "0", "taxCategoryID": "0",
                **({"dob": _ts(dob)} if dob else {}),
                "Contact": {
                    "contactID": str(customer_id), "custom": "", "noEmail": _bool(not email),
                    "noPhone": _bool(not phone_rows), "noMail": "true", "timeStamp": now,
                    "Addresses": {"ContactAddress": {  # §4.5: empty collections are ""
                        k: address.get(k, "") for k in ("address1", "address2", "city", "state", "zip", "country")}}
                    if address else "",
                    "Phones": {"ContactPhone": _one_or_many(phone_rows)} if phone_rows else "",
                    "Emails": {"ContactEmail": {"address": email, "useType": "Primary"}} if email else "",
                    "Websites": "",
                },
            }
            return customer_id

    def edit_customer(self, customer_id: int, at: datetime | None = None, **fields: str) -> None:
        """The customer's own fields (`firstName="Ana"`, `archived="true"`) changed at the till: its
        `timeStamp` (last modified, §5) moves."""
        with self._lock:
            row = self._rows["Customer"][customer_id]
            row.update(fields)
            row["timeStamp"] = _ts(self._now(at))

    def archive_customer(self, customer_id: int, at: datetime | None = None) -> None:
        """Deleting a customer archives it (§5)."""
        self.edit_customer(customer_id, at, archived="true")

    def edit_contact(self, customer_id: int, at: datetime | None = None, email: str | None = None,
                     phones: dict[str, str] | None = None) -> None:
        """The customer's email or phones changed: only the Contact's `timeStamp` moves (the pessimistic reading:
        the fact sheet does not say that a Contact edit moves the Customer's)."""
        with self._lock:
            contact = self._rows["Customer"][customer_id]["Contact"]
            if email is not None:
                contact["Emails"] = {"ContactEmail": {"address": email, "useType": "Primary"}} if email else ""
                contact["noEmail"] = _bool(not email)
            if phones is not None:
                rows = [{"number": number, "useType": use} for use, number in phones.items()]
                contact["Phones"] = {"ContactPhone": _one_or_many(rows)} if rows else ""
                contact["noPhone"] = _bool(not rows)
            contact["timeStamp"] = _ts(self._now(at))

    def _make_line(self, sale: _Sale, line: dict, at: datetime) -> _Line:
        made = _Line(
            id=self._new_id("SaleLine"), sale_id=sale.id, shop_id=sale.shop_id, item_id=line.get("item_id") or 0,
            quantity=int(line.get("quantity", 1)), unit_price=Decimal(str(line.get("unit_price", "0"))),
            discount=Decimal(str(line.get("discount", "0"))), tax1_rate=Decimal(str(line.get("tax1", "0"))),
            tax2_rate=Decimal(str(line.get("tax2", "0"))), parent_id=line.get("parent_sale_line_id") or 0,
            created=at, stamp=at,
        )
        self._lines[made.id] = made
        sale.lines.append(made)
        return made

    def add_sale(self, shop_id: int, lines: list[dict], customer_id: int | None = None,
                 payments: Sequence[dict] = (), completed: bool = True, voided: bool = False,
                 at: datetime | None = None, ticket_number: str | None = None) -> int:
        with self._lock:
            at = self._now(at)
            sale_id = self._new_id("Sale")
            # §9: on creation createTime = timeStamp = updatetime; on completion completeTime joins them
            sale = _Sale(id=sale_id, shop_id=shop_id, customer_id=customer_id or 0,
                         ticket=ticket_number or f"22{sale_id:010d}", created=at, stamp=at, updated=at,
                         completed_at=at if completed else None, voided=voided)
            self._sales[sale_id] = sale
            for line in lines:
                self._make_line(sale, line, at)
            for payment in payments:
                sale.payments.append(_Payment(self._new_id("SalePayment"), payment["payment_type_id"],
                                              Decimal(str(payment["amount"])), bool(payment.get("archived")), at))
            return sale_id

    def _touch(self, sale: _Sale, at: datetime) -> None:
        sale.updated = at
        # §9: timeStamp is "last modified" on open sales; after completion whether it moves is
        # unconfirmed, so it stays pinned at the completion time (the pessimistic reading)
        if sale.completed_at is None:
            sale.stamp = at

    def add_line(self, sale_id: int, line: dict, at: datetime | None = None) -> int:
        with self._lock:
            at = self._now(at)
            sale = self._sales[sale_id]
            made = self._make_line(sale, line, at)
            self._touch(sale, at)
            return made.id

    def remove_line(self, sale_id: int, sale_line_id: int, at: datetime | None = None) -> None:
        with self._lock:
            sale = self._sales[sale_id]
            sale.lines.remove(self._lines.pop(sale_line_id))
            self._touch(sale, self._now(at))

    def move_line(self, sale_line_id: int, to_sale_id: int, at: datetime | None = None) -> None:
        """The merchant moves a line to another ticket: the line keeps its ID, both sales change at once."""
        with self._lock:
            at = self._now(at)
            line = self._lines[sale_line_id]
            self._sales[line.sale_id].lines.remove(line)
            self._touch(self._sales[line.sale_id], at)
            line.sale_id = to_sale_id
            self._sales[to_sale_id].lines.append(line)
            self._touch(self._sales[to_sale_id], at)

    def set_sale_customer(self, sale_id: int, customer_id: int | None, at: datetime | None = None) -> None:
        """The sale's customer changed at the till; None takes it off (`customerID` "0")."""
        with self._lock:
            sale = self._sales[sale_id]
            sale.customer_id = customer_id or 0
            self._touch(sale, self._now(at))

    def set_line_quantity(self, sale_line_id: int, quantity: int, at: datetime | None = None) -> None:
        with self._lock:
            at = self._now(at)
            line = self._lines[sale_line_id]
            line.quantity, line.stamp = quantity, at
            self._touch(self._sales[line.sale_id], at)

    def complete_sale(self, sale_id: int, at: datetime | None = None) -> None:
        with self._lock:
            at = self._now(at)
            sale = self._sales[sale_id]
            if sale.completed_at is not None:
                raise ValueError(f"sale {sale_id} is already completed")
            sale.completed_at = sale.stamp = sale.updated = at  # §9: timeStamp becomes the completion time

    def void_sale(self, sale_id: int, at: datetime | None = None, reason: str = "Customer changed their mind") -> None:
        with self._lock:
            sale = self._sales[sale_id]
            sale.voided = True
            when = self._now(at)
            if self.void_moves_updatetime:
                self._touch(sale, when)
            void_id = self._new_id("SaleVoid")
            self._rows["SaleVoid"][void_id] = {
                "saleVoidID": str(void_id), "createTime": _ts(when), "reason": reason, "saleID": str(sale_id),
                "employeeID": "1", "shopID": str(sale.shop_id)}

    def refund_sale(self, sale_id: int, sale_line_ids: list[int] | None = None, at: datetime | None = None) -> int:
        with self._lock:
            at = self._now(at)
            original = self._sales[sale_id]
            chosen = [l for l in original.lines if sale_line_ids is None or l.id in sale_line_ids]
            if sale_line_ids is not None and len(chosen) != len(set(sale_line_ids)):
                raise KeyError(f"not every line in {sale_line_ids} belongs to sale {sale_id}")
            # §9: a refund is a new completed sale whose lines point back via parentSaleLineID
            refund_id = self.add_sale(original.shop_id, [], customer_id=original.customer_id, at=at)
            refund = self._sales[refund_id]
            for line in chosen:
                self._make_line(refund, {"item_id": line.item_id, "quantity": -line.quantity,
                                         "unit_price": line.unit_price, "discount": -line.discount,
                                         "tax1": line.tax1_rate, "tax2": line.tax2_rate,
                                         "parent_sale_line_id": line.id}, at)
            paid_with = next((p.type_id for p in original.payments if not p.archived), None)
            if paid_with is not None and refund.lines:
                refund.payments.append(_Payment(self._new_id("SalePayment"), paid_with,
                                                self._totals(refund)["calcTotal"], False, at))
            return refund_id

    def sale_ids(self) -> list[int]:
        """Every sale, open, completed, voided or refund, in the order they were made."""
        with self._lock:
            return list(self._sales)

    def sale(self, sale_id: int) -> dict:
        with self._lock:
            return copy.deepcopy(self._render_sale(self._sales[sale_id], frozenset(_KINDS["Sale"].relations)))

    # ------------------------------------------------------------------ observation and faults
    def request_count(self, path_suffix: str = "", status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if r.path.endswith(path_suffix) and (status is None or r.status == status))

    @property
    def current_refresh_token(self) -> str:
        with self._lock:
            return next(reversed(self._refresh_tokens), "")

    def fail_next(self, count: int = 1, status: int = 500, path_suffix: str = "Sale.json",
                  retry_after: int | None = None, only_with: str | None = None,
                  message: str = "Injected failure") -> None:
        """The next `count` requests to a path ending so fail with `status`; with `only_with`, only those that
        carry that query parameter (`updatetime`: a window's pages, not reads by ID)."""
        with self._lock:
            self._fails.append(_Fault(count, path_suffix, status, retry_after, only_with, message))

    def drop_next(self, count: int = 1, path_suffix: str = "Sale.json") -> None:
        with self._lock:
            self._drops.append(_Fault(count, path_suffix))

    def cut_next(self, count: int = 1, path_suffix: str = "Sale.json") -> None:
        """The next `count` successful answers on a path ending so come with their JSON body cut off half-way (the
        Content-Length that of what is sent): the fact sheet's "truncated or invalid JSON" a client must not take
        for a page."""
        with self._lock:
            self._cuts.append(_Fault(count, path_suffix))

    def stick_next(self, count: int = 1, path_suffix: str = "Sale.json") -> None:
        """The next `count` follow-up pages (those asked for with `after`) on a path ending so give as `next` the URL
        they were asked for: a cursor that does not advance, which a client following `next` would follow for ever
        (fact sheet §3: a tap's loop detection, [S25])."""
        with self._lock:
            self._stuck.append(_Fault(count, path_suffix, only_with="after"))

    def clear_faults(self) -> None:
        """Injected failures, drops, cut bodies and stuck cursors not used yet are forgotten."""
        with self._lock:
            self._fails.clear()
            self._drops.clear()
            self._cuts.clear()
            self._stuck.clear()

    def expire_access_tokens(self) -> None:
        """Every access token issued so far expires now, before its stated expiry ("tokens generally expire after
        60 minutes, though this is subject to change", §7); refresh tokens keep working."""
        with self._lock:
            for grant in self._access.values():
                grant.expires_at = self._now() - timedelta(seconds=1)

    def corrupt_sale(self, sale_id: int, **fields: Any) -> None:
        """Serve these raw values on the sale from now on (bad data from the till: "12,50", a huge name...)."""
        with self._lock:
            self._sales[sale_id].corrupted.update(fields)

    def revoke_all_tokens(self) -> None:
        """The merchant disconnected the app (§7): every refresh and access token of this account is refused."""
        with self._lock:
            self._refresh_tokens.clear()
            self._access.clear()
            self._minted_from.clear()

    def reauthorise(self) -> str:
        """A new refresh token, as the authorization-code flow gives when the merchant authorises the app again
        (§7); it starts a chain of its own. Tokens of earlier chains are untouched: `revoke_all_tokens` ends them."""
        with self._lock:
            refresh_token = f"def50200{secrets.token_hex(300 + secrets.randbelow(100))}"
            self._refresh_tokens[refresh_token] = self._now()
            self._refresh_history.add(refresh_token)
            self.issued.append(refresh_token)
            return refresh_token

    def set_bucket_level(self, level: float) -> None:
        with self._lock:
            self._level, self._level_at = level, time.monotonic()

    # ------------------------------------------------------------------ HTTP
    def _answer(self, request: Request) -> tuple[Response, RequestRecord, bool]:
        """This account's response to a request routed to it (under the emulator's lock), and its record;
        True to drop the connection."""
        drop = self._take(self._drops, request)
        fault = None if drop else self._take(self._fails, request)
        if fault is not None:
            response = self._fault_response(fault)
        elif self._too_heavy(request):
            response = Response(self.heavy_page_status, _error_body(self.heavy_page_status, "Heavy page"))
        elif request.path == TOKEN_PATH:
            response = self._token(request)
        elif request.path.startswith("/API/"):
            response = self._api(request)
        else:
            response = Response(404, _error_body(404, f"Unknown path {request.path}"))
        if response.status == 200 and isinstance(response.body, dict):
            attributes = response.body.get("@attributes") or {}
            if attributes.get("next") and self._take(self._stuck, request):
                attributes["next"] = f"{self._cloud._base_url}{request.raw_target}"
            if self._take(self._cuts, request):
                whole = json.dumps(response.body).encode()
                response.body = whole[:len(whole) // 2]
        record = RequestRecord(request.method, request.path, request.query,
                               0 if drop else response.status, self._now())
        self.requests.append(record)
        return response, record, drop is not None

    def _owns_refresh_token(self, refresh_token: str) -> bool:
        return refresh_token in self._refresh_tokens or refresh_token in self._refresh_history

    def _too_heavy(self, request: Request) -> bool:
        """Large pages with relations fail on a loaded account (`heavy_page_status`)."""
        if self.max_sale_page is None or not request.path.endswith("Sale.json"):
            return False
        limit = request.arg("limit")
        return int(limit) > self.max_sale_page if limit and limit.isdigit() else True

    @staticmethod
    def _take(faults: list[_Fault], request: Request) -> _Fault | None:
        for fault in faults:
            if fault.remaining > 0 and request.path.endswith(fault.path_suffix) \
                    and (fault.only_with is None or fault.only_with in request.query):
                fault.remaining -= 1
                return fault
        return None

    @staticmethod
    def _fault_response(fault: _Fault) -> Response:
        status = fault.status
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if status == 429:
            headers["X-LS-API-RateLimit-Type"] = "api-leaky-bucket"
            body = _error_body(429, "Rate Limit Exceeded: Please decrease your request volume.",
                               "RateLimitedException")
        else:
            body = _error_body(status, fault.message)
        return Response(status, body, headers)

    def _token(self, request: Request) -> Response:
        if request.method != "POST":
            return _oauth_error(405, "invalid_request", "The token endpoint only accepts POST")
        now = self._now()
        self._token_requests = [t for t in self._token_requests if now - t < timedelta(minutes=1)] + [now]
        if self.max_token_requests_per_minute is not None \
                and len(self._token_requests) > self.max_token_requests_per_minute:
            wait = 60.0 - (now - self._token_requests[-1 - self.max_token_requests_per_minute]).total_seconds()
            response = _oauth_error(429, "too_many_requests", "Too many token requests: at most "
                                    f"{self.max_token_requests_per_minute} a minute per connection")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        form = _token_form(request)
        if form is None:
            return _oauth_error(400, "invalid_request", "The request body is not a JSON object")
        if "json" in request.headers.get("content-type", "") and "scope" in form:
            # §7: the 2026 bug report [S32] saw JSON plus scope rejected this way
            return _oauth_error(400, "invalid_grant", "The provided authorization grant or refresh token is invalid")
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(400, "unsupported_grant_type", "The authorization grant type is not supported")
        client = (form.get("client_id"), form.get("client_secret"))
        if client not in self._cloud._clients():
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        parent = form.get("refresh_token", "")
        if parent not in self._refresh_tokens:
            return _oauth_error(400, "invalid_grant", "The refresh token is invalid. Token has been revoked")
        if self.refresh_token_lifetime is not None \
                and self._now() - self._refresh_tokens[parent] > self.refresh_token_lifetime:
            del self._refresh_tokens[parent]
            return _oauth_error(400, "invalid_grant", "The refresh token is invalid. Token has expired")
        if client != (self.client_id, self.client_secret):  # RFC 6749 §5.2: issued to another client
            return _oauth_error(400, "invalid_grant", "The refresh token was issued to another client")
        # §7 rotation: the access token that came with `parent`, and anything minted from it before, die now;
        # `parent` itself only dies when the new access token is first used (deferred revoke, 2026-01-15)
        paired = next((g for g in self._access.values() if g.refresh_token == parent), None)
        if paired is not None:
            del self._access[paired.access_token]
        if (earlier := self._minted_from.pop(parent, None)) is not None:
            self._access.pop(earlier.access_token, None)
            self._refresh_tokens.pop(earlier.refresh_token, None)
        grant = _Grant(self._new_access_token(), f"def50200{secrets.token_hex(300 + secrets.randbelow(100))}",
                       parent, self._now() + timedelta(seconds=self.access_token_ttl), self.scopes)
        self._access[grant.access_token] = grant
        self._refresh_tokens[grant.refresh_token] = self._now()
        self._refresh_history.add(grant.refresh_token)
        self.issued += [grant.access_token, grant.refresh_token]
        self._minted_from[parent] = grant
        self.refresh_count += 1
        return Response(200, {"token_type": "Bearer", "expires_in": self.access_token_ttl,
                              "access_token": grant.access_token, "refresh_token": grant.refresh_token})

    def _new_access_token(self) -> str:
        # §7: a JWT of variable length carrying the account in `acct`; the signature is random
        expires = self._now() + timedelta(seconds=self.access_token_ttl)
        claims = {"acct": self.account_id, "exp": int(expires.timestamp()),
                  "scope": self.scopes,
                  "jti": secrets.token_hex(16 + secrets.randbelow(48))}
        header = _b64url(json.dumps({"typ": "JWT", "alg": "RS256"}).encode())
        return f"{header}.{_b64url(json.dumps(claims).encode())}.{_b64url(secrets.token_bytes(256))}"

    def _admit(self, access_token: str) -> bool:
        """Whether this account issued `access_token` and it is still good; its first use retires its parent."""
        grant = self._access.get(access_token)
        if grant is None or grant.expires_at <= self._now():
            return False
        if not grant.used:  # §7 deferred revoke: first use of the new access token retires the old refresh token
            grant.used = True
            self._refresh_tokens.pop(grant.parent, None)
            self._minted_from.pop(grant.parent, None)
        return True

    def _api(self, request: Request) -> Response:
        token = _bearer(request)
        holder = self._cloud._token_holder(token)
        if holder is None or not holder._admit(token):
            return Response(401, _error_body(401, "Access token could not be verified"))
        if holder is not self:
            # Only a path naming this account brings another account's token here. The errors page [S7] gives
            # 401 to a missing, invalid or expired token ("resolved by refreshing") and 403 to a token that was
            # accepted but lacks access; refreshing cannot fix a token for another account, so 403.
            # Unconfirmed: no public source shows the real answer to a foreign account's token.
            return Response(403, _error_body(403, "Not Authorized: Insufficient rights to perform the request",
                                             "InsufficientRightsException"))
        match = _ROUTE.fullmatch(request.path)
        kind = self._kind(match["kind"]) if match and match["kind"] else None
        needed = _SCOPES.get(match["kind"] or "") if match else None
        if needed and not needed & set(self._access[token].scope.split()):
            # the errors page [S7]: 403 for a token accepted but lacking access (its wording here is the emulator's)
            return Response(403, _error_body(403, "Not Authorized: Insufficient rights to perform the request",
                                             "InsufficientRightsException"))
        relations = self._relations(kind, request) if kind else frozenset()
        list_endpoint = not (match and match["id"])
        counting = list_endpoint and kind is not None and request.arg("count") == "1"
        headers, limited = self._charge(COUNT_COST if counting else
                                        1 + sum(self._surcharge(kind, r, list_endpoint) for r in relations or ()))
        if limited is not None:
            limited.headers.update(headers)
            return limited
        try:
            if relations is None:
                raise _ApiError(400, "load_relations must be a JSON array of relation names or 'all'")
            body = self._route(request, match, kind, relations)
        except _ApiError as exc:
            return Response(exc.status, _error_body(exc.status, exc.message), headers)
        return Response(200, body, headers)

    def _route(self, request: Request, match: re.Match | None, kind: _Kind | None,
               relations: frozenset[str]) -> dict:
        if match is None or (match["kind"] and kind is None):
            raise _ApiError(404, f"Unknown path {request.path}")
        if not match["ext"] and "application/json" not in request.headers.get("accept", ""):
            # §1: XML is the default format; this emulator speaks JSON only
            raise _ApiError(406, "This emulator only serves JSON: add .json or send Accept: application/json")
        if request.method != "GET":
            raise _ApiError(405, "This emulator only serves reads")
        account = {"accountID": self.account_id, "name": "Emulated account",
                   "link": {"@attributes": {"href": f"/API/V3/Account/{self.account_id}"}}}
        if match["acct"] is None:  # §1: the account(s) the token can access, which is this one
            return {"@attributes": {"count": "1"}, "Account": account}
        if match["acct"] != self.account_id:
            # an account this server does not have (a known one is answered by that account, see `_recipient`);
            # unconfirmed: the status is undocumented; a 404 reads as "no such account"
            raise _ApiError(404, f"Object of type 'Account' not found with primary ID '{match['acct']}'.")
        if kind is None:
            return {"@attributes": {"count": "1"}, "Account": account}
        name = match["kind"]
        if match["id"]:
            row_id = int(match["id"]) if match["id"].isdigit() else -1
            if row_id not in self._table(name):
                raise _ApiError(404, f"Object of type '{name}' not found with primary ID '{match['id']}'.")
            return {"@attributes": {"count": "1"}, name: self._render(name, row_id, relations)}
        return self._list(request, name, kind, relations)

    # ------------------------------------------------------------------ rate limiting (§6)
    @staticmethod
    def _surcharge(kind: _Kind, name: str, list_endpoint: bool) -> float:
        to_many, under_many = kind.relations[name]
        return (0.2 if to_many else 0.1) * (2 if under_many else 1) * (2 if list_endpoint else 1)

    def _charge(self, cost: float) -> tuple[dict[str, str], Response | None]:
        now = time.monotonic()  # bucket time is real time: a client's sleep must really drain it
        self._level = max(0.0, self._level - (now - self._level_at) * self.drip_rate)
        self._level_at = now
        if math.floor(now) != self._window:
            self._window, self._burst = math.floor(now), 0
        self._burst += 1
        limited = None
        if self._burst > self.burst_limit:
            limited = self._limited("api-burst-limiter", math.ceil(self._window + 1 - now),
                                    "Rate Limit Exceeded: burst rate limit exceeded. Please wait at least 1 second.")
        elif self._level > self.bucket_size:
            # the first request that overflowed was let through; the rest wait until the next one fits
            wait = (self._level + cost - self.bucket_size) / self.drip_rate
            limited = self._limited("api-leaky-bucket", math.ceil(wait),
                                    "Rate Limit Exceeded: Please decrease your request volume.")
        else:
            self._level += cost
        headers = {
            "X-LS-API-Bucket-Level": f"{_num(round(self._level, 4))}/{_num(self.bucket_size)}",
            "X-LS-API-Drip-Rate": _num(self.drip_rate),
            "X-LS-API-Request-Cost": _num(round(cost, 4)),
            "X-LS-API-Burst-Level": f"{self._burst}/{self.burst_limit}",
            "X-LS-Acct-Id": self.account_id,
        }
        return headers, limited

    @staticmethod
    def _limited(kind: str, retry_after: int, message: str) -> Response:
        return Response(429, _error_body(429, message, "RateLimitedException"),
                        {"Retry-After": str(max(1, retry_after)), "X-LS-API-RateLimit-Type": kind})

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _relations(kind: _Kind, request: Request) -> frozenset[str] | None:
        """The relations to load, or None when `load_relations` is malformed."""
        raw = request.arg("load_relations")
        if not raw:
            return frozenset()
        if raw == "all":
            return frozenset(kind.relations)
        try:
            asked = json.loads(raw)
        except ValueError:
            asked = None
        if not isinstance(asked, list) or not all(isinstance(name, str) for name in asked):
            return None
        # a nested relation loads its parent too; relations this emulator does not model are ignored
        return frozenset(part for name in asked if name in kind.relations
                         for part in (name, name.split(".")[0]) if part in kind.relations)

    def _table(self, name: str) -> dict[int, Any]:
        return self._sales if name == "Sale" else self._rows[name]

    def _render(self, name: str, row_id: int, relations: frozenset[str]) -> dict:
        if name == "Sale":
            return self._render_sale(self._sales[row_id], relations)
        row = dict(self._rows[name][row_id])
        if "Contact" not in relations:
            row.pop("Contact", None)
        return row

    def _list(self, request: Request, name: str, kind: _Kind, relations: frozenset[str]) -> dict:
        if request.arg("count") == "1":
            return self._count(request, name, relations)
        limit_text = request.arg("limit") or "100"
        if not limit_text.isdigit() or int(limit_text) > 100:
            raise _ApiError(400, f"Invalid limit '{limit_text}': limit must be between 0 and 100")  # §2
        limit = int(limit_text)
        sort_text = request.arg("sort") or kind.id_field
        sort_field, descending = sort_text.lstrip("-"), sort_text.startswith("-")
        if sort_field not in kind.sortable:
            raise _ApiError(400, f"Invalid sort field '{sort_field}'. Sortable fields: {', '.join(kind.sortable)}")
        matching = self._matching(request, name, relations)

        def key(row: dict) -> tuple:
            if sort_field == kind.id_field:
                return (int(row[kind.id_field]),)
            return _rank(sort_field, row.get(sort_field)), int(row[kind.id_field])

        rows = sorted(matching, key=key, reverse=descending)
        after, before = request.arg("after"), request.arg("before")
        if after and before:
            raise _ApiError(400, "after and before cannot be combined")
        cursor = self._decode_cursor(after or before, sort_field, kind) if (after or before) else None

        def beyond(row: dict) -> bool:  # later than the cursor in the requested order
            return key(row) < cursor if descending else key(row) > cursor

        if before:
            earlier = [r for r in rows if not beyond(r) and key(r) != cursor]
            page = earlier[max(0, len(earlier) - limit):] if limit else []
            has_previous, has_next = len(earlier) > limit, bool(page)
        else:
            page = [r for r in rows if beyond(r)][:limit] if after else rows[:limit]
            has_previous, has_next = bool(after and page), len(page) == limit and limit > 0

        def link(direction: str, row: dict) -> str:
            value: list[Any] = [int(row[kind.id_field])]  # §3: [id], or [sort value, id]
            if sort_field != kind.id_field:
                value.insert(0, row.get(sort_field))
            token = base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()
            params = [(k, v[-1]) for k, v in request.query.items() if k not in ("after", "before", "sort", "limit")]
            params += [("sort", sort_text), ("limit", str(limit)), (direction, token)]
            return f"{self._cloud._base_url}{request.path}?{urlencode(params, quote_via=quote, safe='')}"

        body: dict[str, Any] = {"@attributes": {"next": link("after", page[-1]) if has_next else "",
                                                "previous": link("before", page[0]) if has_previous else ""}}
        if page:  # §4.1/§4.5: no rows -> no key; one row -> an object
            body[name] = _one_or_many([self._render(name, int(r[kind.id_field]), relations) for r in page])
        return body

    def _count(self, request: Request, name: str, relations: frozenset[str]) -> dict:
        """§2: `count=1` answers only `{"@attributes": {"count": "N"}}`, the rows the filters match; it cannot
        be combined with limit, sort, after or before."""
        combined = [p for p in ("limit", "sort", "after", "before") if request.arg(p) is not None]
        if combined:
            raise _ApiError(400, f"count cannot be combined with {', '.join(combined)}")
        return {"@attributes": {"count": str(len(self._matching(request, name, relations)))}}

    def _matching(self, request: Request, name: str, relations: frozenset[str]) -> list[dict]:
        """The rows the request's filters and `archived` select, as rendered for those filters (a relation
        searched in is loaded for the test). Rows are evaluated now, so a row whose sort value changed
        mid-crawl can jump the cursor (§9)."""
        archived = (request.arg("archived") or "false").lower()
        if archived not in ("false", "true", "only"):
            raise _ApiError(400, f"Invalid archived value '{archived}': use true, false or only")
        tests = [self._filter(name, key, values[-1], relations)
                 for key, values in request.query.items() if key not in _CONTROL]
        searched = frozenset(key.partition(".")[0] for key in request.query if "." in key)  # relations searched in
        rows = [self._render(name, row_id, searched) for row_id in self._table(name)]
        if archived != "true":  # §2: false (default) hides archived rows, only shows nothing else
            rows = [r for r in rows if (r.get("archived") == "true") == (archived == "only")]
        return [r for r in rows if all(test(r) for test in tests)]

    @staticmethod
    def _decode_cursor(token: str, sort_field: str, kind: _Kind) -> tuple:
        try:
            value = json.loads(base64.b64decode(token, validate=True))
            if sort_field == kind.id_field:
                (row_id,) = value
                return (int(row_id),)
            sort_value, row_id = value
            return _rank(sort_field, sort_value), int(row_id)
        except (ValueError, TypeError):
            raise _ApiError(400, "Invalid pagination cursor") from None

    def _filter(self, name: str, field_name: str, raw: str, relations: frozenset[str]) -> Callable[[dict], bool]:
        """`field=OP,value` (§2) as a predicate on a rendered row; `Relation.field` searches a loaded relation."""
        if relation := _RELATION_FIELD.fullmatch(field_name):
            if relation["relation"] not in relations:
                raise _ApiError(400, f"Invalid query parameter '{field_name}' for {name}: "
                                     f"load the {relation['relation']} relation to search in it")
            inner = relation["field"]
            test = self._filter_value(inner, raw)
            return lambda row: test((row.get(relation["relation"]) or {}).get(inner))
        if field_name not in self._kind(name).filterable:
            raise _ApiError(400, f"Invalid query parameter '{field_name}' for {name}")
        if name == "Sale" and field_name == self._updatetime_spelling and self.reject_updatetime_filter:
            raise _ApiError(400, f"Field '{field_name}' cannot be used as a search filter")
        if name == "SaleVoid" and field_name == "createTime" and self.reject_void_createtime_filter:
            raise _ApiError(400, f"Field '{field_name}' cannot be used as a search filter")
        test = self._filter_value(field_name, raw)
        return lambda row: test(row.get(field_name))

    @staticmethod
    def _filter_value(field_name: str, raw: str) -> Callable[[str | None], bool]:
        """`OP,value` as a predicate on one field's value as rendered (None when absent)."""
        head, comma, rest = raw.partition(",")
        op, value = (head, rest) if comma and head in _OPS else ("=", raw)
        try:
            if op == "IN":
                items = [v.strip().strip("'\"") for v in value.strip().removeprefix("[").removesuffix("]").split(",")]
                if len(items) > 100:
                    raise _ApiError(400, "The IN operator accepts at most 100 values")
                wanted = {_coerce(field_name, v) for v in items}
                return lambda found: found is not None and _coerce(field_name, found) in wanted
            if op in ("~", "!~"):
                pattern = re.compile(".*".join(map(re.escape, value.split("%"))), re.IGNORECASE)
                return lambda found: (pattern.fullmatch(found or "") is not None) == (op == "~")
            if op == "><":
                low, high = (_coerce(field_name, v) for v in value.split(",", 1))
                compare: Callable[[Any], bool] = lambda v: low <= v <= high  # §2: between is inclusive
            else:
                target, test = _coerce(field_name, value), _COMPARE[op]
                compare = lambda v: test(v, target)  # noqa: E731
        except ValueError:
            raise _ApiError(400, f"Invalid value '{value}' for field '{field_name}'") from None
        # an absent value (completeTime of an open sale) matches nothing, like NULL in SQL
        return lambda found: found is not None and compare(_coerce(field_name, found))

    # ------------------------------------------------------------------ sale shapes (§4, §5)
    @staticmethod
    def _totals(sale: _Sale) -> dict[str, Decimal]:
        calcs = [line.calcs() for line in sale.lines]
        subtotal = sum((c[0] for c in calcs), Decimal(0))
        discount = sum((c[1] for c in calcs), Decimal(0))
        # the sale rounds each tax to cents, then adds: 29.99 + 1.5 + 2.99 = 34.48 in the docs sample
        tax1 = sum((c[2] for c in calcs), Decimal(0)).quantize(_CENT, ROUND_HALF_UP)
        tax2 = sum((c[3] for c in calcs), Decimal(0)).quantize(_CENT, ROUND_HALF_UP)
        taxable = sum((c[0] - c[1] for c, l in zip(calcs, sale.lines) if l.tax1_rate or l.tax2_rate), Decimal(0))
        payments = sum((p.amount for p in sale.payments if not p.archived), Decimal(0))
        return {"calcSubtotal": subtotal, "calcDiscount": discount, "calcTax1": tax1, "calcTax2": tax2,
                "calcTaxable": taxable, "calcNonTaxable": subtotal - discount - taxable,
                "calcTotal": subtotal - discount + tax1 + tax2, "calcPayments": payments}

    def _render_sale(self, sale: _Sale, relations: frozenset[str]) -> dict:
        total = self._totals(sale)
        t = {k: _num(v) for k, v in total.items()}
        first = sale.lines[0] if sale.lines else None
        row: dict[str, Any] = {
            "saleID": str(sale.id), "timeStamp": _ts(sale.stamp), "discountPercent": "0",
            "completed": _bool(sale.completed_at is not None), "archived": "false", "voided": _bool(sale.voided),
            "enablePromotions": "true", "isTaxInclusive": "false", "createTime": _ts(sale.created),
            self._updatetime_spelling: _ts(sale.updated),  # §4.6: the Sale reference's spelling, or the tutorial's
        }
        if sale.completed_at is not None:  # open sales carry no completeTime (docs sample 302)
            row["completeTime"] = _ts(sale.completed_at)
        row.update({
            "referenceNumber": "", "referenceNumberSource": "",
            "tax1Rate": _num(first.tax1_rate) if first else "0", "tax2Rate": _num(first.tax2_rate) if first else "0",
            "change": "0", "tipEnabled": "false", "receiptPreference": "printed",
            "displayableSubtotal": t["calcSubtotal"], "ticketNumber": sale.ticket,
            "calcDiscount": t["calcDiscount"], "calcTotal": t["calcTotal"], "calcSubtotal": t["calcSubtotal"],
            "calcTaxable": t["calcTaxable"], "calcNonTaxable": t["calcNonTaxable"], "calcAvgCost": "0",
            "calcFIFOCost": "0", "calcTax1": t["calcTax1"], "calcTax2": t["calcTax2"],
            "calcPayments": t["calcPayments"], "calcTips": "0", "total": t["calcTotal"], "totalDue": t["calcTotal"],
            "displayableTotal": t["calcTotal"], "balance": _num(total["calcTotal"] - total["calcPayments"]),
            "customerID": str(sale.customer_id), "discountID": "0", "employeeID": "1", "tipEmployeeID": "0",
            "quoteID": "0", "registerID": "1", "shipToID": "0", "shopID": str(sale.shop_id), "taxCategoryID": "0",
        })
        if "Customer" in relations and sale.customer_id:  # §4.5: Customer is absent when customerID is "0"
            row["Customer"] = self._render("Customer", sale.customer_id,
                                           frozenset({"Contact"}) if "Customer.Contact" in relations else frozenset())
        # §4.5: a sale without lines or payments simply lacks the key, as in the recorded 2016 fixture
        if "SaleLines" in relations and sale.lines:
            row["SaleLines"] = {"SaleLine": _one_or_many([self._render_line(l, relations) for l in sale.lines])}
        if "SalePayments" in relations and sale.payments:
            row["SalePayments"] = {"SalePayment": _one_or_many([self._render_payment(sale, p, relations)
                                                                for p in sale.payments])}
        row["taxTotal"] = _num(total["calcTax1"] + total["calcTax2"])
        row.update(sale.corrupted)
        return row

    def _render_line(self, line: _Line, relations: frozenset[str]) -> dict:
        subtotal, discount, tax1, tax2, total = line.calcs()
        row = {
            "saleLineID": str(line.id), "createTime": _ts(line.created), "timeStamp": _ts(line.stamp),
            "unitQuantity": str(line.quantity), "unitPrice": _num(line.unit_price), "normalUnitPrice": "0",
            "discountAmount": _num(discount), "discountPercent": "0", "avgCost": "0", "fifoCost": "0",
            "tax": _bool(bool(line.tax1_rate or line.tax2_rate)), "tax1Rate": _num(line.tax1_rate),
            "tax2Rate": _num(line.tax2_rate), "isLayaway": "false", "isWorkorder": "false",
            "isSpecialOrder": "false", "displayableSubtotal": _num(subtotal),
            "displayableUnitPrice": _num(line.unit_price), "calcLineDiscount": _num(discount),
            "calcTransactionDiscount": "0", "calcTotal": _num(total), "calcSubtotal": _num(subtotal),
            "calcTax1": _num(tax1), "calcTax2": _num(tax2), "taxClassID": "1", "customerID": "0",
            "discountID": "0", "employeeID": "1", "itemID": str(line.item_id), "noteID": "0",
            "parentSaleLineID": str(line.parent_id), "shopID": str(line.shop_id), "saleID": str(line.sale_id),
        }
        if "SaleLines.Item" in relations and line.item_id in self._rows["Item"]:
            row["Item"] = dict(self._rows["Item"][line.item_id])
        return row

    def _render_payment(self, sale: _Sale, payment: _Payment, relations: frozenset[str]) -> dict:
        row = {
            "salePaymentID": str(payment.id), "amount": _num(payment.amount), "tipAmount": "0",
            "createTime": _ts(payment.created), "archived": _bool(payment.archived), "remoteReference": "",
            "paymentID": "", "saleID": str(sale.id), "paymentTypeID": str(payment.type_id), "ccChargeID": "0",
            "refPaymentID": "0", "registerID": "1", "employeeID": "1", "creditAccountID": "0",
        }
        if "SalePayments.PaymentType" in relations and payment.type_id in self._rows["PaymentType"]:
            row["PaymentType"] = dict(self._rows["PaymentType"][payment.type_id])
        return row


class LightspeedEmulator(LightspeedAccount):
    """The Lightspeed cloud on 127.0.0.1 (one API base URL, one token URL) and the handle of its first account;
    `add_account` registers more accounts on the same server. Plain HTTP, or HTTPS given `tls_dir` (a throwaway CA
    written there as `ca_bundle`, as the Salesforce emulator does)."""

    def __init__(self, account_id: str = "182255", client_id: str = "ls-client-id",
                 client_secret: str = "ls-client-secret", refresh_token: str = "ls-refresh-0",
                 bucket_size: float = 90.0, drip_rate: float = 1.0, burst_limit: int = 20,
                 access_token_ttl: int = 3600, latency: float = 0.0,
                 clock: Callable[[], datetime] | None = None, tls_dir: Path | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self._lock = threading.RLock()
        self.ca_bundle: Path | None = None  # the CA a client must trust, when served over HTTPS
        ssl_context = None
        if tls_dir is not None:
            ssl_context, self.ca_bundle = loopback_tls(Path(tls_dir))
        self._server = EmulatorServer(self._handle, ssl_context, latency=latency)
        self._base_url = ""
        self._accounts: dict[str, LightspeedAccount] = {account_id: self}
        super().__init__(self, account_id, client_id, client_secret, refresh_token, bucket_size, drip_rate,
                         burst_limit, access_token_ttl)

    def start(self) -> str:
        self._base_url = self._server.start()
        return self._base_url

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> LightspeedEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_account(self, account_id: str, refresh_token: str | None = None, client_id: str | None = None,
                    client_secret: str | None = None) -> LightspeedAccount:
        """Another account on this server. Its client defaults to this emulator's, as when one app is authorised
        by several merchants; its rate limits start as this account's."""
        with self._lock:
            refresh_token = refresh_token or f"ls-refresh-{account_id}-0"
            if account_id in self._accounts:
                raise ValueError(f"account {account_id} is already on this emulator")
            if any(account._owns_refresh_token(refresh_token) for account in self._accounts.values()):
                raise ValueError(f"refresh token {refresh_token!r} already belongs to another account")
            account = LightspeedAccount(self, account_id, client_id or self.client_id,
                                        client_secret or self.client_secret, refresh_token, self.bucket_size,
                                        self.drip_rate, self.burst_limit, self.access_token_ttl)
            self._accounts[account_id] = account
            return account

    def accounts_env(self) -> dict[str, str]:
        """A multi-account configuration of every account, as an operator writes it: the shared client is this
        account's, and an account names its own client only when it differs."""
        with self._lock:
            env = {"LIGHTSPEED_ACCOUNTS": ",".join(self._accounts), "LIGHTSPEED_CLIENT_ID": self.client_id,
                   "LIGHTSPEED_CLIENT_SECRET": self.client_secret, "LIGHTSPEED_API_URL": self.api_url,
                   "LIGHTSPEED_TOKEN_URL": self.token_url}
            for account in self._accounts.values():
                own = account.account_env()
                if (account.client_id, account.client_secret) == (self.client_id, self.client_secret):
                    own = {k: v for k, v in own.items() if k.endswith("_REFRESH_TOKEN")}
                env.update(own)
            return env

    def _handle(self, request: Request) -> Response:
        with self._lock:
            account = self._recipient(request)
            response, record, drop = account._answer(request)
            # Every HTTP server dates its responses; Lightspeed's clock is the one the sync must follow.
            response.headers["Date"] = formatdate(self._clock().timestamp(), usegmt=True)
        if account.after_request is not None:
            account.after_request(record)  # outside the lock: the hook changes data as the merchant would
        if drop:
            raise DropConnection
        return response

    def _recipient(self, request: Request) -> LightspeedAccount:
        """The account a request is about: the one its path or refresh token names, else the one its access
        token belongs to, else the first (which answers unknown accounts and paths)."""
        if request.path == TOKEN_PATH:
            refresh_token = (_token_form(request) or {}).get("refresh_token", "")
            return next((a for a in self._accounts.values() if a._owns_refresh_token(refresh_token)), self)
        match = _ROUTE.fullmatch(request.path)
        named = self._accounts.get(match["acct"]) if match and match["acct"] else None
        return named or self._token_holder(_bearer(request)) or self

    def _token_holder(self, access_token: str) -> LightspeedAccount | None:
        return next((a for a in self._accounts.values() if access_token in a._access), None)

    def _clients(self) -> set[tuple[str, str]]:
        return {(a.client_id, a.client_secret) for a in self._accounts.values()}
