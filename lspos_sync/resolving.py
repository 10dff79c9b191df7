"""Who each sale's customer is in Salesforce, and what Salesforce already has of a batch's sales: the lookups
(through the writer, behind the writes they must see) and the decisions, which the run keeps for the customers
of recent batches."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from lspos_sync import mapping
from lspos_sync.customers import (CREATE, CREATED, GUEST, KEY, Candidates, PersonAccount, Resolution, customer_phones,
                                  normalise_email, primary_email, resolve, resolve_in_turn)
from lspos_sync.errors import ConfigError
from lspos_sync.fieldmap import DEFAULT, FieldMap
from lspos_sync.salesforce import queries
from lspos_sync.writing import CREATE_ACCOUNTS, Write, Writer

if TYPE_CHECKING:
    from lspos_sync.lightspeed.models import Customer, Sale

# A batch's records as mapped, by sale id: (transaction, lines, content hash).
Built = dict[int, tuple[dict[str, Any], list[dict[str, Any]], str]]
# What the lookups match a customer by: its key, its email and its phones as E.164 (`Resolver.person`).
Person = tuple[str, str | None, list[str]]


@dataclass
class Found:
    """What Salesforce has for a batch's sales, as far as their writes depend on it."""

    customers: dict[str, Customer]  # the batch's customers, by customer key
    candidates: Candidates
    existing: dict[str, dict]  # the transactions already there (their Account__c, Match_Status__c), by sale key
    checked: set[str]  # sale keys whose transaction was looked up before writing
    stale: dict[str, list[str]]  # Ids of lines Salesforce has and Lightspeed no longer, by sale key
    # Of those, the lines another sale of the batch holds now (moved in Lightspeed): Id -> that sale's key. Its
    # write of the line waits on the delete (the master-detail is not reparentable).
    moved: dict[str, str] = field(default_factory=dict)


class Resolver:
    def __init__(self, account_id: str, writer: Writer, *, phone_region: str, person_record_type: str,
                 enriched: tuple[str, ...], check_all: bool, kept: int, match_status: bool,
                 foreseen: Foreseen | None = None, field_map: FieldMap = DEFAULT) -> None:
        self.account_id = account_id
        self.writer = writer
        self.field_map = field_map  # what an account the run creates holds (`new_account`)
        self.foreseen = foreseen  # dry-run: the account writes the run would have made, laid over every lookup
        self.region = phone_region
        self.person_record_type = person_record_type
        # what the lookups read of an Account: with LSPOS_ENRICH_PROFILES, also the profile fields it may fill
        self.account_fields = queries.account_fields(enriched)
        self.check_all = check_all  # a dry-run's preview and the roll-ups look up every sale's transaction
        self.match_status = match_status  # the mapping writes Match_Status__c: the lookups read it back
        # customer key -> decision, for the customers of recent batches: one decided longer ago is looked up
        # again if it comes back (by then it has its key), so memory stays flat over long windows.
        self.decisions: Recent[str, Resolution] = Recent(kept)
        self._record_type_id: str | None = None  # "" when the org has none
        self.like = True  # until Salesforce refuses a phone LIKE
        # How long the lookup statements may be, for the run: shorter once Salesforce finds one too complicated
        # (the bulk path's and the roll-ups' lookups keep to it too).
        self.budget = queries.Budget()

    def customer_key(self, sale: Sale) -> str | None:
        return mapping.key(self.account_id, sale.customer_id) if sale.customer_id is not None else None

    def resolve(self, sales: list[Sale], built: Built, known: dict[str, tuple[str, str]]) -> Found:
        """Decides the batch's customers not decided yet and reads the transactions (and their stale lines)
        that the writes depend on."""
        customers = {self.customer_key(s): s.customer for s in sales if s.customer_id is not None and s.customer}
        unresolved = {k: c for k, c in customers.items() if k not in self.decisions}
        for key in customers.keys() - unresolved.keys():
            self.decisions.move_to_end(key)  # this batch's decisions are the newest: the last to be forgotten
        sale_keys = [built[s.sale_id][0][mapping.SALE_KEY] for s in sales]
        # The transactions already in Salesforce are read before writing only where what is written depends on
        # them: sales written before (their stale lines), sales linked to no account (a hand link is kept), and
        # every sale for a dry-run's preview or the roll-ups. Any other sale Salesforce turns out to have (its
        # upsert says so) gets its stale lines deleted after the fact, by the settler.
        if self.check_all:
            checked = set(sale_keys)
        else:
            checked = {key for sale, key in zip(sales, sale_keys)
                       if key in known or not self._links_account(sale, customers)}
        candidates, existing = self.look_up(unresolved, [key for key in sale_keys if key in checked])
        self.decisions.update(resolve_in_turn(unresolved, candidates, self.region,
                                              lambda key, customer: new_account(key, customer, self.region,
                                                                                self.field_map)))
        late = [key for sale, key in zip(sales, sale_keys) if key not in checked and not self._links_account(sale, customers)]
        if late:  # found ambiguous just now
            existing.update(self.existing(late))
            checked.update(late)
        moved: dict[str, str] = {}
        stale = self.stale_lines({record["Id"]: sale_key for sale_key, record in existing.items()},
                                 {t[mapping.SALE_KEY]: mapping.current_lines(t, lines)
                                  for t, lines, _ in built.values()}, moved) if existing else {}
        return Found(customers, candidates, existing, checked, stale, moved)

    def decision(self, sale: Sale, found: Found) -> Resolution:
        """The account the sale goes to."""
        customer_key = self.customer_key(sale)
        if customer_key in found.customers:
            return self.decisions[customer_key]
        if customer_key is None:
            return resolve(None, None, found.candidates, self.region)
        return Resolution(GUEST, reason=f"customer {sale.customer_id} not found in Lightspeed")

    def keep_decision_only(self, customer_key: str) -> None:
        """The run remembers the decision, not the account as found (memory stays flat over long windows), and
        that its account write is on its way: a later batch links to it and writes it no more."""
        decided = self.decisions[customer_key]
        self.decisions[customer_key] = Resolution(decided.status, decided.account_id, decided.reason,
                                                  candidates=decided.candidates, account_key=decided.account_key)

    def account_answered(self, write: Write) -> Resolution | None:
        """Salesforce answered a customer's account write: the decision, now with the account's Id; or, refused,
        forgotten, to be decided afresh by a later batch or run (None)."""
        resolution = self.decisions.get(write.customer_key)
        if resolution is None:
            return None
        if write.error:
            del self.decisions[write.customer_key]
            return None
        self.decisions[write.customer_key] = Resolution(
            resolution.status, resolution.account_id or write.id, resolution.reason)
        return resolution

    def _links_account(self, sale: Sale, customers: dict[str, Customer]) -> bool:
        """Whether the sale is to be linked to an account, as far as is known (a customer not decided yet
        counts as linked)."""
        customer_key = self.customer_key(sale)
        if customer_key is None or customer_key not in customers:
            return False  # a guest
        resolution = self.decisions.get(customer_key)
        return resolution is None or resolution.account_id is not None or resolution.account_key is not None \
            or resolution.status == CREATED

    # -- Salesforce reads
    def look_up(self, customers: dict[str, Customer], sale_keys: list[str]) -> tuple[Candidates, dict[str, dict]]:
        """Candidate Person Accounts for the customers, the transactions already there for the sale keys, and
        (once a run) the Person Account record type: one round of `/composite` requests (more if Salesforce finds a
        statement too complicated: then all of it again in shorter ones, `self.budget`)."""
        return self.look_up_people([self.person(key, customer) for key, customer in customers.items()], sale_keys)

    def person(self, key: str, customer: Customer) -> Person:
        """What the lookups match a customer by: its key, its email and its phones as E.164."""
        return key, normalise_email(primary_email(customer)), customer_phones(customer, self.region)

    def look_up_people(self, people: list[Person], sale_keys: list[str]) -> tuple[Candidates, dict[str, dict]]:
        """`look_up`, for customers already turned into what the lookups match them by (`person`)."""
        return self.budget.ask(lambda limit: self._look_up(people, self.account_fields, sale_keys, limit))

    def _look_up(self, people: list[Person], select: str, sale_keys: list[str],
                 limit: int) -> tuple[Candidates, dict[str, dict]]:
        by_account = queries.person_accounts(people, select, like=self.like, limit=limit)
        # dry-run: the accounts the run would have changed so that these customers match them by now
        by_id = queries.accounts_by_id(self.foreseen.reached(people), select, limit) if self.foreseen else []
        by_sale = queries.transactions_by_key(sale_keys, self.match_status, limit)
        record_type = [queries.person_record_type(self.person_record_type)] \
            if people and self._record_type_id is None else []
        answers = self.writer.queries(by_account + by_id + by_sale + record_type,
                                      frozenset(range(len(by_account))) if self.like else frozenset())
        account_answers = answers[:len(by_account)]
        if None in account_answers:
            # A server that refuses LIKE: equality on the usual spellings of each number instead, this time and
            # for the rest of the run.
            self.like = False
            account_answers = self.writer.queries(queries.person_accounts(people, select, like=False, limit=limit))
        if record_type:
            found = answers[-1] or []
            self._record_type_id = found[0]["Id"] if found else ""
        candidates = Candidates()
        for records in account_answers + answers[len(by_account):len(by_account) + len(by_id)]:
            for record in records or ():
                candidates.add(self.foreseen.as_written(record) if self.foreseen
                               else queries.person_account(record, self.region))
        if self.foreseen:
            for account in self.foreseen.created_for(people):
                candidates.add(account)
        transactions = len(by_account) + len(by_id)
        existing = {record[mapping.SALE_KEY]: record
                    for records in answers[transactions:transactions + len(by_sale)] for record in records or ()}
        return candidates, existing

    def existing(self, sale_keys: list[str]) -> dict[str, dict]:
        """The transactions Salesforce has for these sale keys, by sale key."""
        answers = self.budget.ask(lambda limit: self.writer.queries(
            queries.transactions_by_key(sale_keys, self.match_status, limit)))
        return {record[mapping.SALE_KEY]: record for records in answers for record in records or ()}

    def stale_lines(self, key_of: dict[str, str], current: dict[str, set[str] | None],
                    moved: dict[str, str] | None = None) -> dict[str, list[str]]:
        """Ids of lines in Salesforce that the sale no longer has in Lightspeed, per sale key, given the sales'
        transactions (Id -> sale key) and the line keys each has now (`mapping.current_lines`: None for a voided
        sale, which keeps its lines). With `moved`, each of those lines that another of the sales has now is noted
        there: its Id -> that sale's key."""
        key_of = {record_id: sale_key for record_id, sale_key in key_of.items() if current.get(sale_key) is not None}
        if not key_of:
            return {}
        holder = {line: sale for sale, lines in current.items() for line in lines or ()} if moved is not None else {}
        stale: dict[str, list[str]] = {}
        answers = self.budget.ask(lambda limit: self.writer.queries(queries.lines_by_transaction(key_of, limit),
                                                                    after_lines=True))
        for records in answers:
            for record in records or ():
                sale_key = key_of.get(record["Sales_Transaction__c"])
                if sale_key and record[mapping.LINE_KEY] not in current[sale_key]:  # type: ignore[operator]
                    stale.setdefault(sale_key, []).append(record["Id"])
                    if moved is not None and (new_sale := holder.get(record[mapping.LINE_KEY])) is not None:
                        moved[record["Id"]] = new_sale
        return stale

    def person_record_type_id(self) -> str:
        return record_type_id(self._record_type_id, self.person_record_type)  # read with the batch's lookups


class Foreseen:
    """dry-run: the account writes the run would have made, laid over what its lookups find.

    A dry-run writes nothing, so its lookups see Salesforce as it was before the run, where a sync's see what the
    sync wrote before them: the customer feed's accounts, those of the parked sales' and the SaleVoid feed's
    batches, of earlier batches, and (LIGHTSPEED_ACCOUNTS) of the accounts synced before. The dry-run's writer
    (`RecordingSink`) records each account write here as it is handed over, as Salesforce would hold it; the
    resolver's lookups (the sales' and the customer feed's) then find the accounts the run would create, as
    candidates with their customer key standing in for the Id (`PersonAccount.by_run`), and the accounts it
    would change with the key it would stamp and the blanks it would fill. One for the whole dry-run, handed to
    each account's run in turn; a real run has none.
    """

    def __init__(self, region: str) -> None:
        self.region = region
        self.created = Candidates()  # the accounts the run would create, as a lookup would find them
        self.changes: dict[str, dict[str, Any]] = {}  # account Id -> the fields the run would set on it
        # what those fields make an account match that it may not have matched before: a key stamped, an email or
        # a phone (E.164) filled -> the accounts' Ids
        self._reached_by: dict[str, set[str]] = {}

    def record(self, kind: str, record: dict[str, Any]) -> None:
        """An account write (create, or update by Id), the record as Salesforce would hold it: in the contract's
        names, without what the mapping switches off."""
        if kind == CREATE_ACCOUNTS:
            key = record[mapping.CUSTOMER_KEY]
            self.created.add(replace(queries.person_account({"Id": key, **record}, self.region), by_run=CREATE))
            return
        account_id = record.get("id")
        if not account_id:
            return
        fields = {name: value for name, value in record.items() if name not in ("attributes", "id")}
        self.changes.setdefault(account_id, {}).update(fields)
        reached = queries.person_account({"Id": account_id, **fields}, self.region)
        for value in (reached.customer_key, reached.email, *reached.phones):
            if value:
                self._reached_by.setdefault(value, set()).add(account_id)

    def reached(self, people: Iterable[Person]) -> list[str]:
        """The Ids of the accounts the customers may match by a field the run would set: a lookup of Salesforce
        as it is does not find them by it."""
        ids: dict[str, None] = {}
        for key, email, phones in people:
            for value in (key, email, *phones):
                if value in self._reached_by:
                    ids.update(dict.fromkeys(sorted(self._reached_by[value])))
        return list(ids)

    def as_written(self, record: dict[str, Any]) -> PersonAccount:
        """An account as a lookup found it, with what the run would set on it."""
        changes = self.changes.get(record["Id"])
        if not changes:
            return queries.person_account(record, self.region)
        account = queries.person_account({**record, **changes}, self.region)
        stamped = not record.get(mapping.CUSTOMER_KEY) and account.customer_key
        return replace(account, by_run=KEY) if stamped else account

    def created_for(self, people: Iterable[Person]) -> Iterator[PersonAccount]:
        """The accounts the run would create that the customers may match: by key, email or phone."""
        for key, email, phones in people:
            if (account := self.created.by_key.get(key)) is not None:
                yield account
            if email:
                yield from self.created.by_email.get(email, ())
            for phone in phones:
                yield from self.created.by_phone.get(phone, ())


def new_account(customer_key: str, customer: Customer, region: str, field_map: FieldMap) -> PersonAccount:
    """The Person Account a customer with no candidate gets, as a lookup will read it once created: its key, and the
    email and phones the record holds (the mapping file's switched-off fields are not written); its customer key
    stands in for the Id (`PersonAccount.by_run` CREATE: a sale is linked to it by key)."""
    record = {"Id": customer_key, mapping.CUSTOMER_KEY: customer_key, **mapping.profile_fields(customer, False)}
    held = field_map.incoming(mapping.ACCOUNT, field_map.outgoing(mapping.ACCOUNT, record))
    return replace(queries.person_account(held, region), by_run=CREATE)


def record_type_id(found: str | None, developer_name: str) -> str:
    """The Person Account record type the lookups found; none is a configuration error (exit 2)."""
    if not found:
        raise ConfigError(f"no Person Account record type '{developer_name}' in Salesforce: enable Person Accounts "
                          "or set LSPOS_PERSON_ACCOUNT_RECORD_TYPE to its DeveloperName")
    return found


class Recent(OrderedDict):
    """A dict that keeps the `size` entries set last; setting an entry makes it the newest."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for key, value in dict(*args, **kwargs).items():
            self[key] = value
