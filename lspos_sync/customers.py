"""Customer matching (contract §4): Lightspeed ID, then email, then phone as E.164; never a guess."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from lspos_sync.lightspeed.models import Customer


LINKED, EMAIL, PHONE, CREATED, GUEST, AMBIGUOUS = "Linked", "Email", "Phone", "Created", "Guest", "Ambiguous"
# What a dry-run's run would do to an account before a lookup (`PersonAccount.by_run`).
CREATE, KEY = "create", "key"

# Deliberately plain: one @, no spaces, a dot in the domain. Salesforce rejects worse ones per record.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(address: str | None) -> str | None:
    """Trimmed and lower-cased, or None when it is not an email address."""
    if not address:
        return None
    email = address.strip().lower()
    return email if _EMAIL.match(email) and len(email) <= 80 else None


@lru_cache(maxsize=4096)
def normalise_phone(number: str | None, region: str) -> str | None:
    """E.164 (`+14155550134`) of a phone number written in any format, or None when it has no E.164 form or is a
    placeholder: one that does not parse, has the wrong number of digits for its country, is a local number
    without its area code, or has digits all alike or in a run (`000-000-0000`, `123-456-7890`). Those would link
    strangers who typed the same placeholder. A well-formed number is compared whether or not a numbering plan
    assigns it (contract §4: "compared as E.164"; `(555) 123-4567` is one)."""
    if not number or not any(ch.isdigit() for ch in number):
        return None
    import phonenumbers  # loaded on first use: its metadata is large and a no-op run never needs it

    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(parsed) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    if _placeholder(phonenumbers.national_significant_number(parsed)):
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if len(_NATIONAL) >= 4096:
        _NATIONAL.clear()
    _NATIONAL[e164] = str(parsed.national_number)
    return e164


_RUNS = "0123456789012345678909876543210987654321"


def _placeholder(digits: str) -> bool:
    """Digits typed where a form demands a phone: all alike, or counting up or down."""
    return len(set(digits)) == 1 or digits in _RUNS


# E.164 -> its national significant number, as `normalise_phone` parsed it lately (the lookups built right after
# ask for it: no second parse). Emptied when it reaches the size of that function's cache.
_NATIONAL: dict[str, str] = {}


def national_digits(e164: str) -> str:
    """The national significant number of an E.164 number: the digits any stored format must contain."""
    known = _NATIONAL.get(e164)
    if known is not None:
        return known
    import phonenumbers

    return str(phonenumbers.parse(e164).national_number)


def primary_email(customer: Customer) -> str | None:
    """The Primary ContactEmail (Lightspeed allows one); one without a useType counts, a Secondary does not."""
    emails = [e for e in customer.emails if e.use_type.strip().lower() in ("primary", "") and e.address.strip()]
    emails.sort(key=lambda e: e.use_type.strip().lower() != "primary")
    return emails[0].address.strip() if emails else None


def mobile_phone(customer: Customer) -> str | None:
    return next((p.number.strip() for p in customer.phones if p.use_type.lower() == "mobile"), None)


def other_phone(customer: Customer) -> str | None:
    """The first Home or Work phone, in the order Lightspeed lists them."""
    return next((p.number.strip() for p in customer.phones if p.use_type.lower() in ("home", "work")), None)


@dataclass(frozen=True, slots=True)
class PersonAccount:
    """What the matching needs to know of a Person Account found in Salesforce."""

    id: str
    customer_key: str | None
    email: str | None
    phones: frozenset[str]  # E.164
    name: str = ""
    profile: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # fields as Salesforce has them
    # dry-run (resolving.Foreseen): CREATE, an account the run would create, not in Salesforce (`id` is its customer
    # key); KEY, one the run would stamp with `customer_key`
    by_run: str = ""


@dataclass(frozen=True, slots=True)  # slots: a run keeps one per customer
class Resolution:
    """The decision for one customer: how it matched, which account, and why."""

    status: str
    account_id: str | None = None
    reason: str = ""
    stamp_key: bool = False  # matched an account without our key: stamp LS_Customer_ID__c on it
    create: bool = False  # no candidate: upsert a new Person Account on LS_Customer_ID__c
    candidates: tuple[str, ...] = ()
    account: PersonAccount | None = None  # the matched account, as found
    # an account not in Salesforce yet, by its LS_Customer_ID__c: the customer's own when it is created, or (in a
    # bulk round) the account created for another customer of the round that this one matches
    account_key: str | None = None


@dataclass
class Candidates:
    """Person Accounts found for a batch, indexed the three ways the rules look them up."""

    by_key: dict[str, PersonAccount] = field(default_factory=dict)
    by_email: dict[str, list[PersonAccount]] = field(default_factory=dict)
    by_phone: dict[str, list[PersonAccount]] = field(default_factory=dict)

    def add(self, account: PersonAccount) -> None:
        if account.customer_key:
            self.by_key[account.customer_key] = account
        if account.email:
            _add_unique(self.by_email.setdefault(account.email, []), account)
        for phone in account.phones:
            _add_unique(self.by_phone.setdefault(phone, []), account)


def _add_unique(accounts: list[PersonAccount], account: PersonAccount) -> None:
    if all(existing.id != account.id for existing in accounts):
        accounts.append(account)


def customer_phones(customer: Customer, region: str) -> list[str]:
    """Every phone of the customer as E.164, in Lightspeed's order, without repeats."""
    phones: list[str] = []
    for phone in customer.phones:
        e164 = normalise_phone(phone.number, region)
        if e164 and e164 not in phones:
            phones.append(e164)
    return phones


def resolve(customer: Customer | None, customer_key: str | None, candidates: Candidates,
            region: str) -> Resolution:
    """Apply the matching rules to one customer.

    The key is stamped only on an account that has none yet: one already keyed (to another customer,
    or from another Lightspeed account sharing the org) is linked but never re-keyed.
    """
    if customer is None or customer_key is None:
        return Resolution(GUEST, reason="no customer on the sale")
    linked = candidates.by_key.get(customer_key)
    if linked is not None:
        return _on(Resolution(LINKED, linked.id, reason=f"LS_Customer_ID__c = {customer_key}", account=linked))

    email = normalise_email(primary_email(customer))
    if email:
        found = candidates.by_email.get(email, [])
        if len(found) == 1:
            return _matched(EMAIL, found[0], f"PersonEmail = {email}")
        if len(found) > 1:
            return Resolution(AMBIGUOUS, reason=f"{len(found)} accounts have PersonEmail {email}",
                              candidates=tuple(a.id for a in found))
    found_by_phone: list[PersonAccount] = []
    matched_phone = ""
    for phone in customer_phones(customer, region):
        for account in candidates.by_phone.get(phone, []):
            if all(account.id != other.id for other in found_by_phone):
                found_by_phone.append(account)
                matched_phone = matched_phone or phone
    if len(found_by_phone) == 1:
        return _matched(PHONE, found_by_phone[0], f"phone {matched_phone}")
    if len(found_by_phone) > 1:
        return Resolution(AMBIGUOUS, reason=f"{len(found_by_phone)} accounts share the customer's phone",
                          candidates=tuple(a.id for a in found_by_phone))
    return Resolution(CREATED, reason="no Person Account by key, email or phone", create=True)


def _matched(status: str, account: PersonAccount, reason: str) -> Resolution:
    if account.customer_key:
        by_run = " by this run" if account.by_run == KEY else ""
        reason += f" (already keyed {account.customer_key}{by_run}: linked, not re-keyed)"
    return _on(Resolution(status, account.id, reason=reason, stamp_key=not account.customer_key, account=account))


def _on(resolution: Resolution) -> Resolution:
    """A dry-run's link to an account the run would create: by its key (the planner writes `Account__r`), as the
    sync links it to the account created by then."""
    account = resolution.account
    if account is None or account.by_run != CREATE:
        return resolution
    return Resolution(resolution.status, None, resolution.reason + ", the Person Account this run would create",
                      account=account, account_key=account.customer_key)


def hand_link(account_id: str | None, match_status: str | None) -> str | None:
    """The account an admin linked a transaction to by hand, as Salesforce has the transaction; else None.

    A link is the sync's own where `Match_Status__c` says the sync linked it (`Linked`, `Email`, `Phone`,
    `Created`). Next to `Guest`, `Ambiguous` or no status at all (the sync never wrote one: also where the mapping
    switches the field off and the lookup does not read it), the sync left the sale unlinked: someone else linked it.
    """
    return account_id if account_id and match_status in (None, "", GUEST, AMBIGUOUS) else None


def resolve_in_turn(customers: dict[str, Customer], candidates: Candidates, region: str,
                    new_account: Callable[[str, Customer], PersonAccount]) -> dict[str, Resolution]:
    """The customers of a batch (customer key -> Customer, in sale order) decided one after the other, as a later
    batch's lookup would find the accounts created for an earlier one: a customer with no candidate gets a Person
    Account (`new_account`: as a lookup will read it, `by_run` CREATE), which is a candidate for the customers after
    it. So two new clients sharing an email end with one account whether their sales are synced together or apart.
    Then `claim_accounts`."""
    decided = {}
    for customer_key, customer in customers.items():
        decided[customer_key] = resolution = resolve(customer, customer_key, candidates, region)
        if resolution.create:
            candidates.add(new_account(customer_key, customer))
    return claim_accounts(decided)


def claim_accounts(resolutions: dict[str, Resolution]) -> dict[str, Resolution]:
    """Two customers that match one unkeyed account in the same batch: the first (in sale order) gets the
    account keyed to it; the others are linked to it without re-keying it, as on every later run."""
    claimed: set[str] = set()
    settled = {}
    for customer_key, resolution in resolutions.items():
        if resolution.stamp_key and resolution.account_id in claimed:
            resolution = Resolution(resolution.status, resolution.account_id,
                                    resolution.reason + " (keyed to another customer in this run: linked only)",
                                    account=resolution.account)
        elif resolution.stamp_key:
            claimed.add(resolution.account_id)  # type: ignore[arg-type]
        settled[customer_key] = resolution
    return settled
