"""SOQL the sync needs, built in batches that stay under Salesforce's query length limit."""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Iterable, Iterator, TypeVar

from lspos_sync.customers import PersonAccount, national_digits, normalise_email, normalise_phone
from lspos_sync.errors import QueryTooHeavy, RunFailed
from lspos_sync.mapping import CUSTOMER_KEY, ENRICHABLE, LINE, LINE_KEY, SALE_KEY, TRANSACTION

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_SOQL = 90_000  # Salesforce allows 100,000 characters; keep a margin
# The shortest statements a lookup is split into when Salesforce finds it too complicated: a few customers, or
# a few dozen keys, a statement.
MIN_SOQL = 1_000
PHONE_FIELDS = ("PersonMobilePhone", "Phone", "PersonHomePhone")
# What matching reads of an Account, whatever the mapping switches off: a key, an email, phones.
_MATCHING_FIELDS = ("Id", "Name", CUSTOMER_KEY, "PersonEmail", *PHONE_FIELDS)
ACCOUNT_FIELDS = ", ".join(_MATCHING_FIELDS)


def account_fields(enriched: Iterable[str] = ()) -> str:
    """What the customer lookups read of an Account: what matching needs, and the profile fields enrichment may fill
    (`enriched`: with LSPOS_ENRICH_PROFILES, those the mapping does not switch off; only then, so that an org
    without the others, or without read access to them, still syncs)."""
    return ", ".join([*_MATCHING_FIELDS, *(f for f in enriched if f not in _MATCHING_FIELDS)])


def literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Budget:
    """How long the run's lookup statements may be. Salesforce may refuse a statement well under the length limit
    as too complicated (QUERY_TOO_COMPLICATED, fact sheet §3.2, no threshold given), or stop it as running too long
    (QUERY_TIMEOUT, REQUEST_RUNNING_TOO_LONG, §4: "shrink the request"; the phone `LIKE` patterns scan every Person
    Account of a large org): the lookup is then asked again whole in statements half as long, down to MIN_SOQL,
    and the run keeps the shorter length."""

    def __init__(self) -> None:
        self.limit = MAX_SOQL

    def ask(self, lookup: Callable[[int], T]) -> T:
        """`lookup(limit)`, which builds its statements no longer than `limit` and sends them; again with half
        the limit each time Salesforce finds one too complicated or too long."""
        while True:
            try:
                return lookup(self.limit)
            except QueryTooHeavy as refusal:
                if self.limit <= MIN_SOQL:
                    raise RunFailed(f"{refusal} even in statements of at most {MIN_SOQL:,} characters: the run "
                                    "stopped; the next run starts again from the checkpoint") from None
                if self.limit == MAX_SOQL:
                    log.info("Salesforce %s; asking in smaller statements", refusal.what)
                self.limit = max(self.limit // 2, MIN_SOQL)


def _in_batches(prefix: str, values: Iterable[str], limit: int = MAX_SOQL) -> list[str]:
    """`prefix IN (...)` statements, as few as the length limit allows."""
    statements, current = [], []
    size = len(prefix) + 10
    for value in dict.fromkeys(values):
        quoted = literal(value)
        if current and size + len(quoted) + 1 > limit:
            statements.append(f"{prefix} IN ({','.join(current)})")
            current, size = [], len(prefix) + 10
        current.append(quoted)
        size += len(quoted) + 1
    if current:
        statements.append(f"{prefix} IN ({','.join(current)})")
    return statements


def phone_spellings(e164: str) -> list[str]:
    """The usual ways of writing one number: E.164, international, national, and the national digit
    groups joined by nothing, dashes, dots or spaces, with and without the country code."""
    import phonenumbers

    number = phonenumbers.parse(e164)
    international = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    groups = re.findall(r"\d+", national)
    code = number.country_code
    spellings = [e164, international, national, national_digits(e164), f"+{code} {national}",
                 f"{code} " + " ".join(groups), f"{code}-" + "-".join(groups), f"{code}" + "".join(groups)]
    for joiner in ("", "-", ".", " "):
        spellings.append(joiner.join(groups))
        spellings.append(f"+{code} " + joiner.join(groups))
        spellings.append(f"+{code}" + joiner.join(groups))
    return list(dict.fromkeys(spellings))


def person_accounts(customers: Iterable[tuple[str, str | None, list[str]]], select: str = ACCOUNT_FIELDS,
                    like: bool = True, limit: int = MAX_SOQL) -> list[str]:
    """The accounts that customers (key, email, phones as E.164) may match, in as few statements of at most
    `limit` characters as there can be (one customer always goes in, however long): `LS_Customer_ID__c IN (...) OR (IsPersonAccount = true AND (PersonEmail IN (...) OR <phones>))`.

    Phones are stored in whatever format people typed, so equality cannot find them all. With `like`, each
    number is a LIKE pattern with a wildcard around and between its national digits (`%4%1%5%5%5%5%0%1%3%4%`),
    which matches every way of writing it, an extension after it included (`415-555-0134 x12`); the E.164
    comparison afterwards drops the rare false positive. Without
    (a server that refuses LIKE), equality on the usual spellings, which any SOQL parser takes."""
    return [statement for _, statement in person_account_groups(customers, select, like, limit)]


def person_account_groups(customers: Iterable[tuple[str, str | None, list[str]]], select: str = ACCOUNT_FIELDS,
                          like: bool = True, limit: int = MAX_SOQL) -> Iterator[tuple[list[str], str]]:
    """`person_accounts` one statement at a time, each with the keys of the customers it looks up: every account
    one of them may match is in that statement's answer."""
    keys: dict[str, None] = {}  # literals, in order, without repeats
    emails: dict[str, None] = {}
    phones: dict[str, None] = {}  # LIKE clauses, or spellings (each goes in three lists)
    customer_keys: list[str] = []
    size = 0
    for key, email, numbers in customers:
        parts = [literal(key)] + ([literal(email)] if email else [])
        phone_parts = [_like_clause(phone) for phone in numbers] if like else \
            [literal(spelling) for phone in numbers for spelling in phone_spellings(phone)]
        grow = sum(len(part) + 1 for part in parts) + sum(len(part) + 4 if like else 3 * (len(part) + 1)
                                                          for part in phone_parts)
        if keys and size + grow > limit - len(select) - 250:  # 250: the statement around the lists
            yield customer_keys, _person_accounts_statement(select, keys, emails, phones, like)
            keys, emails, phones, customer_keys, size = {}, {}, {}, [], 0
        keys[parts[0]] = None
        customer_keys.append(key)
        emails.update(dict.fromkeys(parts[1:]))
        phones.update(dict.fromkeys(phone_parts))
        size += grow
    if keys:
        yield customer_keys, _person_accounts_statement(select, keys, emails, phones, like)


def _like_clause(e164: str) -> str:
    pattern = literal("%" + "%".join(national_digits(e164)) + "%")  # the last %: an extension may follow
    return " OR ".join(f"{field} LIKE {pattern}" for field in PHONE_FIELDS)


def _person_accounts_statement(select: str, keys: dict[str, None], emails: dict[str, None], phones: dict[str, None],
                               like: bool) -> str:
    person = [f"PersonEmail IN ({','.join(emails)})"] if emails else []
    if phones and like:
        person.append("(" + " OR ".join(phones) + ")")
    elif phones:
        person += [f"{field} IN ({','.join(phones)})" for field in PHONE_FIELDS]
    where = f"{CUSTOMER_KEY} IN ({','.join(keys)})"
    if person:
        where += f" OR (IsPersonAccount = true AND ({' OR '.join(person)}))"
    return f"SELECT {select} FROM Account WHERE {where}"


def accounts_by_id(ids: Iterable[str], select: str = ACCOUNT_FIELDS, limit: int = MAX_SOQL) -> list[str]:
    return _in_batches(f"SELECT {select} FROM Account WHERE Id", ids, limit)


def transactions_by_key(keys: Iterable[str], match_status: bool, limit: int = MAX_SOQL) -> list[str]:
    """Each transaction's Id, account and (`match_status`) Match_Status__c, which tells a link made by hand: only
    where the mapping writes that field, since an org whose mapping switches it off may not have it."""
    select = f"Id, {SALE_KEY}, Account__c" + (", Match_Status__c" if match_status else "")
    return _in_batches(f"SELECT {select} FROM {TRANSACTION} WHERE {SALE_KEY}", keys, limit)


def lines_by_transaction(transaction_ids: Iterable[str], limit: int = MAX_SOQL) -> list[str]:
    return _in_batches(f"SELECT Id, {LINE_KEY}, Sales_Transaction__c FROM {LINE} WHERE Sales_Transaction__c",
                       transaction_ids, limit)


def person_record_type(developer_name: str) -> str:
    return ("SELECT Id, DeveloperName FROM RecordType WHERE SobjectType = 'Account' AND IsPersonType = true "
            f"AND DeveloperName = {literal(developer_name)}")


def person_account(record: dict[str, Any], region: str) -> PersonAccount:
    phones = frozenset(p for field in PHONE_FIELDS if (p := normalise_phone(record.get(field), region)))
    return PersonAccount(id=record["Id"], customer_key=record.get(CUSTOMER_KEY),
                         profile={f: record[f] for f in ENRICHABLE if f in record},
                         email=normalise_email(record.get("PersonEmail")), phones=phones,
                         name=record.get("Name") or "")
