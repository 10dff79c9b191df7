"""The matching rules of contract §4, as a table: key, then email, then phone as E.164; never a guess."""

import pytest

from lspos_sync.customers import Candidates, PersonAccount, claim_accounts, hand_link, normalise_phone, resolve
from lspos_sync.lightspeed.models import Customer


def customer(email=None, phones=()):
    contact = {"Emails": {"ContactEmail": {"address": email, "useType": "Primary"}} if email else "",
               "Phones": {"ContactPhone": [{"number": n, "useType": t} for t, n in phones]} if phones else ""}
    return Customer.of({"customerID": "7", "firstName": "Ana", "lastName": "Lima", "Contact": contact})


def account(id_, key=None, email=None, phones=()):
    return PersonAccount(id_, key, email, frozenset(normalise_phone(p, "US") for p in phones))


def decide(cust, *accounts):
    candidates = Candidates()
    for a in accounts:
        candidates.add(a)
    return resolve(cust, "182255-7", candidates, "US")


@pytest.mark.parametrize("cust, accounts, status, account_id", [
    (customer("ana@x.com"), [account("A1", key="182255-7"), account("A2", email="ana@x.com")], "Linked", "A1"),
    (customer(" Ana@X.com "), [account("A2", email="ana@x.com")], "Email", "A2"),
    (customer("ana@x.com"), [account("A2", email="ana@x.com"), account("A3", email="ana@x.com")], "Ambiguous", None),
    (customer("ana@x.com", [("Mobile", "415-555-0134")]),
     [account("A2", email="other@x.com", phones=["(415) 555-0134"])], "Phone", "A2"),
    (customer(None, [("Home", "+1 415 555 0134")]), [account("A4", phones=["4155550134"]),
                                                     account("A5", phones=["415.555.0134"])], "Ambiguous", None),
    (customer("ana@x.com"), [], "Created", None),
    (customer("not-an-email", [("Mobile", "12")]), [account("A6", email="not-an-email")], "Created", None),
    # an account keyed to another customer is still the one candidate: linked (and never re-keyed)
    (customer("ana@x.com"), [account("A7", key="182255-99", email="ana@x.com")], "Email", "A7"),
    (customer("ana@x.com"), [account("A7", key="182255-99", email="ana@x.com"),
                             account("A8", email="ana@x.com")], "Ambiguous", None),
    # only the Primary address counts
    (Customer.of({"customerID": "7", "lastName": "L", "Contact": {"Emails": {"ContactEmail": {
        "address": "ana@x.com", "useType": "Secondary"}}}}), [account("A2", email="ana@x.com")], "Created", None),
])
def test_matching_order_and_ambiguity(cust, accounts, status, account_id):
    resolution = decide(cust, *accounts)
    assert (resolution.status, resolution.account_id) == (status, account_id)


def test_matched_account_gets_its_key_stamped_and_created_one_is_upserted():
    assert decide(customer("ana@x.com"), account("A2", email="ana@x.com")).stamp_key is True
    assert decide(customer("ana@x.com")).create is True


def test_sale_without_customer_is_guest():
    assert resolve(None, None, Candidates(), "US").status == "Guest"


@pytest.mark.parametrize("raw, region, e164", [
    ("(415) 555-0134", "US", "+14155550134"), ("+44 20 7946 0958", "US", "+442079460958"),
    ("020 7946 0958", "GB", "+442079460958"), ("06 12 34 56 78", "FR", "+33612345678"),
    ("not a phone", "US", None), ("12", "US", None)])
def test_phone_normalised_to_e164(raw, region, e164):
    assert normalise_phone(raw, region) == e164


@pytest.mark.parametrize("placeholder", [
    "000-000-0000",  # typed where a form demands a phone
    "(111) 111-1111",
    "555-0134",  # no area code: local only, no E.164 form
    "123-456-7890",
    "(987) 654-3210",
    "555-555-5555",
    "415-555-01",  # too few digits for a US number
])
def test_a_number_that_is_no_real_phone_number_matches_no_account(placeholder):
    # Two strangers who both left a placeholder are not one person: only a number that exists compares as E.164.
    resolution = decide(customer(None, [("Mobile", placeholder)]), account("A9", phones=[placeholder]))
    assert (resolution.status, resolution.account_id) == ("Created", None)


@pytest.mark.parametrize("typed, stored", [
    ("555-123-4567", "(555) 123-4567"),  # area code 555 is assigned to no one: still one well-formed number
    ("06 12 34 56 78", "06.12.34.56.78"),  # a French mobile typed without +33 in a US shop, on both sides alike
])
def test_a_well_formed_number_no_plan_assigns_still_matches_as_e164(typed, stored):
    # contract §4: "phone compared as E.164", whatever the format; only placeholders are left out
    resolution = decide(customer(None, [("Mobile", typed)]), account("A9", phones=[stored]))
    assert (resolution.status, resolution.account_id) == ("Phone", "A9")


def test_key_is_stamped_only_on_an_account_without_one():
    assert decide(customer("ana@x.com"), account("A2", email="ana@x.com")).stamp_key is True
    assert decide(customer("ana@x.com"), account("A2", key="999-5", email="ana@x.com")).stamp_key is False


def test_two_customers_matching_one_unkeyed_account_in_a_batch_key_it_once():
    candidates = Candidates()
    candidates.add(account("A2", email="ana@x.com"))
    first = resolve(customer("ana@x.com"), "182255-7", candidates, "US")
    second = resolve(customer("ana@x.com"), "182255-8", candidates, "US")
    settled = claim_accounts({"182255-7": first, "182255-8": second})
    assert [r.stamp_key for r in settled.values()] == [True, False]
    assert {r.account_id for r in settled.values()} == {"A2"}


@pytest.mark.parametrize("account_id, match_status, kept", [
    ("001A", "Ambiguous", "001A"),  # the admin settled an ambiguous sale
    ("001A", "Guest", "001A"),  # the admin knows who the guest was
    ("001A", None, "001A"),  # no status: the sync never wrote one (or the mapping switches it off)
    ("001A", "", "001A"),
    ("001A", "Linked", None),  # links the sync made itself
    ("001A", "Email", None),
    ("001A", "Phone", None),
    ("001A", "Created", None),
    (None, "Ambiguous", None),  # nothing to keep
])
def test_a_link_is_by_hand_only_next_to_a_status_that_says_the_sync_left_the_sale_unlinked(
        account_id, match_status, kept):
    assert hand_link(account_id, match_status) == kept
