"""SOQL the sync needs, built in batches that stay under Salesforce's query length limit."""

from __future__ import annotations

import re
from typing import Any, Iterable

from lspos_sync.customers import PersonAccount, national_digits, normalise_email, normalise_phone
from lspos_sync.mapping import CUSTOMER_KEY, ENRICHABLE, LINE, LINE_KEY, SALE_KEY, TRANSACTION

MAX_SOQL = 90_000  # Salesforce allows 100,000 characters; keep a margin
ACCOUNT_FIELDS = f"Id, Name, {CUSTOMER_KEY}, PersonEmail, PersonMobilePhone, Phone, PersonHomePhone"
# With profile enrichment the lookups also read what enrichment may fill (only then: an org without
# these fields readable still syncs).
ENRICHED_ACCOUNT_FIELDS = ACCOUNT_FIELDS + ", " + ", ".join(f for f in ENRICHABLE if f not in ACCOUNT_FIELDS)
PHONE_FIELDS = ("PersonMobilePhone", "Phone", "PersonHomePhone")


def literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


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


def accounts_by_key(keys: Iterable[str], select: str = ACCOUNT_FIELDS) -> list[str]:
    return _in_batches(f"SELECT {select} FROM Account WHERE {CUSTOMER_KEY}", keys)


def person_accounts_by_email(emails: Iterable[str], select: str = ACCOUNT_FIELDS) -> list[str]:
    # SOQL compares strings case-insensitively, so lower-cased addresses find any spelling.
    return _in_batches(f"SELECT {select} FROM Account WHERE IsPersonAccount = true AND PersonEmail", emails)


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


def person_accounts_by_phone_spelling(phones_e164: Iterable[str], select: str = ACCOUNT_FIELDS) -> list[str]:
    """Equality on the usual spellings: any SOQL parser takes it, and it finds most stored formats."""
    prefix = f"SELECT {select} FROM Account WHERE IsPersonAccount = true AND ("
    spellings = [spelling for phone in dict.fromkeys(phones_e164) for spelling in phone_spellings(phone)]
    statements = []
    for batch in _in_batches("X", spellings, limit=MAX_SOQL // 3):  # the list goes in three times
        values = batch[batch.index("IN ("):]
        statements.append(prefix + " OR ".join(f"{field} {values}" for field in PHONE_FIELDS) + ")")
    return statements


def person_accounts_by_phone(phones_e164: Iterable[str], select: str = ACCOUNT_FIELDS) -> list[str]:
    """Phones are stored in whatever format people typed, so equality cannot find them all. Each number
    becomes a LIKE pattern with a wildcard between its national digits (`%4%1%5%5%5%5%0%1%3%4`), which
    matches every way of writing it; the E.164 comparison afterwards drops the rare false positive."""
    prefix = f"SELECT {select} FROM Account WHERE IsPersonAccount = true AND ("
    statements, clauses = [], []
    size = len(prefix) + 1
    for phone in dict.fromkeys(phones_e164):
        pattern = literal("%" + "%".join(national_digits(phone)))
        clause = " OR ".join(f"{field} LIKE {pattern}" for field in PHONE_FIELDS)
        if clauses and size + len(clause) + 4 > MAX_SOQL:
            statements.append(prefix + " OR ".join(clauses) + ")")
            clauses, size = [], len(prefix) + 1
        clauses.append(clause)
        size += len(clause) + 4
    if clauses:
        statements.append(prefix + " OR ".join(clauses) + ")")
    return statements


def transactions_by_key(keys: Iterable[str]) -> list[str]:
    # Only what the engine reads back: the mapping may switch Match_Status__c off.
    return _in_batches(f"SELECT Id, {SALE_KEY}, Account__c FROM {TRANSACTION} WHERE {SALE_KEY}", keys)


def lines_by_transaction(transaction_ids: Iterable[str]) -> list[str]:
    return _in_batches(f"SELECT Id, {LINE_KEY}, Sales_Transaction__c FROM {LINE} WHERE Sales_Transaction__c",
                       transaction_ids)


def person_record_type(developer_name: str) -> str:
    return ("SELECT Id, DeveloperName FROM RecordType WHERE SobjectType = 'Account' AND IsPersonType = true "
            f"AND DeveloperName = {literal(developer_name)}")


def person_account(record: dict[str, Any], region: str) -> PersonAccount:
    phones = frozenset(p for field in PHONE_FIELDS if (p := normalise_phone(record.get(field), region)))
    return PersonAccount(id=record["Id"], customer_key=record.get(CUSTOMER_KEY),
                         profile={f: record[f] for f in ENRICHABLE if f in record},
                         email=normalise_email(record.get("PersonEmail")), phones=phones,
                         name=record.get("Name") or "")
