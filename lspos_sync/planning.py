"""A batch's sales turned into the writes Salesforce needs: each sale mapped and hashed, the unchanged left out,
then accounts to create or stamp, transactions linked as their customers resolved, lines, stale lines to delete;
and for each sale the line an admin reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from lspos_sync import mapping, rollups
from lspos_sync.customers import AMBIGUOUS, CREATED, GUEST, Resolution, hand_link
from lspos_sync.fieldmap import FieldMap
from lspos_sync.reading import Reader
from lspos_sync.resolving import Built, Found, Resolver
from lspos_sync.state import StateStore
from lspos_sync.summary import RunSummary, SalePlan
from lspos_sync.writing import CREATE_ACCOUNTS, DELETE_LINES, LINES, TRANSACTIONS, UPDATE_ACCOUNTS, Write

if TYPE_CHECKING:
    from lspos_sync.lightspeed.models import Customer, Sale

# The `attributes` of every transaction and line record (the writer copies them where a mapping renames the object).
_TRANSACTION_TYPE = {"type": mapping.TRANSACTION}
_LINE_TYPE = {"type": mapping.LINE}


@dataclass
class Plan:
    """A batch's writes, and what settling it needs to tell each sale's outcome."""

    sales: list[tuple[str, int, str]] = field(default_factory=list)  # (sale key, sale id, content hash)
    writes: list[Write] = field(default_factory=list)
    plans: dict[str, SalePlan] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)  # sale keys whose transaction was looked up before writing
    line_keys: dict[str, set[str] | None] = field(default_factory=dict)  # of the sales not checked (current_lines)
    # LSPOS_ROLLUPS: per sale (sale key, customer key, account linked before, whether that link made by hand is
    # kept, whether the sale was in Salesforce, what it adds to the account's roll-ups)
    rollups: list[tuple[str, str | None, str | None, bool, bool, rollups.Contribution]] = field(default_factory=list)


class Planner:
    def __init__(self, account_id: str, store: StateStore, reader: Reader, resolver: Resolver, field_map: FieldMap,
                 *, dry_run: bool, verify_unchanged: bool, enrich_profiles: bool, roll_up: bool) -> None:
        self.account_id = account_id
        self.store = store
        self.reader = reader
        self.resolver = resolver
        self.field_map = field_map
        self.dry_run = dry_run
        self.verify_unchanged = verify_unchanged
        self.enrich_profiles = enrich_profiles
        self.roll_up = roll_up

    def build(self, sales: list[Sale]) -> Built:
        """Each sale's records, mapped, and their content hash."""
        built = {}
        for sale in sales:
            transaction = mapping.transaction_record(sale, self.account_id, self.reader.shops)
            lines = mapping.line_records(sale, self.account_id, self.reader.categories)
            if self.field_map.needs_raw:
                self._add_mapped_fields(sale, transaction, lines)
            built[sale.sale_id] = (transaction, lines, self._content_hash(transaction, lines))
        return built

    def _content_hash(self, transaction: dict[str, Any], lines: list[dict[str, Any]]) -> str:
        """The hash of what the sale writes: a field the mapping switches off is not written, so a change to it
        alone (a shop renamed, with Shop_Name__c off) is no reason to write the sale again."""
        off = self.field_map.off
        if off:
            transaction = {k: v for k, v in transaction.items() if (mapping.TRANSACTION, k) not in off}
            lines = [{k: v for k, v in line.items() if (mapping.LINE, k) not in off} for line in lines]
        return mapping.content_hash(transaction, lines, self.field_map.fingerprint)

    def changed(self, sales: list[Sale], built: Built, summary: RunSummary) -> tuple[list[Sale], dict[str, tuple[str, str]]]:
        """The sales to write, and what the state store knows of the batch's sales: (hash, match status) by sale
        key. A sale is written when its hash differs from its last write, and whatever the hash when that write
        left its client undecided: Ambiguous, or Guest though the sale names a customer (Lightspeed did not send
        the customer then). The hash covers what the sale writes, not the link, which depends on the CRM too."""
        known = self.store.written([t[mapping.SALE_KEY] for t, _, _ in built.values()])
        if self.verify_unchanged and known:
            # backfill repairs: a sale counts as unchanged only while Salesforce still has it
            present = self.resolver.existing(list(known))
            known = {k: v for k, v in known.items() if k in present}
        todo = []
        for sale in sales:
            transaction, lines, digest = built[sale.sale_id]
            previous = known.get(transaction[mapping.SALE_KEY])
            if previous and previous[0] == digest and previous[1] != AMBIGUOUS and not (
                    previous[1] == GUEST and sale.customer_id is not None):
                summary.unchanged += 1
                if self.dry_run:  # the per-sale preview; a real run keeps no per-sale list, so memory stays flat
                    summary.plans.append(self._sale_plan(sale, transaction, lines, previous[1], None, "", "unchanged"))
            else:
                todo.append(sale)
        return todo, known

    def plan(self, sales: list[Sale], built: Built, found: Found, summary: RunSummary) -> Plan:
        """The writes for the sales to write, given what Salesforce has of them; the sales that need attention
        (ambiguous, incomplete) noted in the summary."""
        plan = Plan(checked=found.checked)
        writes = plan.writes
        dependants: dict[str, list[Sale]] = {}
        for sale in sales:
            if (customer_key := self.resolver.customer_key(sale)) in found.customers:
                dependants.setdefault(customer_key, []).append(sale)
        for customer_key, customer_sales in dependants.items():
            writes.extend(self._account_writes(customer_key, found.customers[customer_key], customer_sales, built))
            self.resolver.keep_decision_only(customer_key)
        existing = found.existing
        for sale in sales:
            transaction, lines, digest = built[sale.sale_id]
            sale_key = transaction[mapping.SALE_KEY]
            customer_key = self.resolver.customer_key(sale)
            resolution = self.resolver.decision(sale, found)
            record = {"attributes": _TRANSACTION_TYPE, **transaction, "Match_Status__c": resolution.status}
            previous = existing.get(sale_key) or {}
            kept = None
            if resolution.account_id is None and (resolution.account_key or resolution.status == CREATED):
                record["Account__r"] = {mapping.CUSTOMER_KEY: resolution.account_key or customer_key}
            elif resolution.account_id is None and (
                    kept := hand_link(previous.get("Account__c"), previous.get("Match_Status__c"))):
                # an admin linked this sale by hand: a rule that finds no single account does not undo it
                del record["Match_Status__c"]
            else:
                record["Account__c"] = resolution.account_id  # None empties a link the sync made before
            summary.ambiguous.pop(sale_key, None)
            if resolution.status == AMBIGUOUS:
                summary.ambiguous[sale_key] = {"sale_key": sale_key, "sale_id": sale.sale_id,
                                               "reason": self.field_map.in_org_names(resolution.reason),
                                               "candidates": list(resolution.candidates), "linked_by_hand": kept}
            summary.gaps.pop(sale_key, None)
            if missing := mapping.gaps(sale, self.account_id, self.reader.shops, self.reader.categories):
                for gap in missing:  # named as the org names them
                    obj = mapping.LINE if gap["line"] else mapping.TRANSACTION
                    gap["left_empty"] = [self.field_map.field(obj, name) for name in gap["left_empty"]]
                summary.gaps[sale_key] = {"sale_key": sale_key, "sale_id": sale.sale_id, "missing": missing}
            keys = (sale_key,)
            writes.append(Write(TRANSACTIONS, record, keys))
            for line in lines:  # hashed already: the record itself goes, typed
                line["attributes"] = _LINE_TYPE
                writes.append(Write(LINES, line, keys))
            # A line moved to another sale of the batch: that sale depends on the delete too, so that a delete
            # refused for a passing reason is sent again with its write of the line (writer.CompositeWriter).
            writes.extend(Write(DELETE_LINES, line_id, keys + ((found.moved[line_id],) if line_id in found.moved
                                                               else ()))
                          for line_id in found.stale.get(sale_key, ()))
            action = "update" if sale_key in existing else "create"
            plan.plans[sale_key] = self._sale_plan(
                sale, transaction, lines, resolution.status, resolution.account_id or kept,
                resolution.reason + ("; the link made by hand is kept" if kept else ""), action)
            plan.sales.append((sale_key, sale.sale_id, digest))
            if sale_key not in found.checked:
                plan.line_keys[sale_key] = mapping.current_lines(transaction, lines)
            if self.roll_up:
                plan.rollups.append((sale_key, customer_key, previous.get("Account__c"), kept is not None,
                                     sale_key in existing, rollups.Contribution(
                    transaction["Status__c"], transaction["Total__c"], transaction["Transaction_Date__c"])))
        return plan

    def _account_writes(self, customer_key: str, customer: Customer, sales: list[Sale], built: Built) -> list[Write]:
        """The account write a customer's resolution calls for, if any (`account_write`)."""
        resolution = self.resolver.decisions[customer_key]
        added = None
        if resolution.create and self.field_map.additions.get(mapping.ACCOUNT):
            added = self.field_map.added_values(mapping.ACCOUNT, {"customer": self.reader.customer_payload(sales[0])})
        write = account_write(customer_key, customer, resolution,
                              tuple(built[sale.sale_id][0][mapping.SALE_KEY] for sale in sales),
                              account_id=self.account_id, record_type_id=self.resolver.person_record_type_id,
                              enrich_profiles=self.enrich_profiles, field_map=self.field_map, added=added)
        return [write] if write else []

    def _add_mapped_fields(self, sale: Sale, transaction: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        """The fields the mapping file adds, filled from the payloads as Lightspeed sent them."""
        raw = self.reader.sale_payload(sale)
        sources = {"sale": raw.sale, "customer": self.reader.customer_payload(sale),
                   "shop": self.reader.raw_shops.get(sale.shop_id) if sale.shop_id is not None else None,
                   "payment": raw.payment}
        transaction.update(self.field_map.added_values(mapping.TRANSACTION, sources))
        if self.field_map.additions.get(mapping.LINE):
            for line, record in zip(sale.lines, lines):  # line_records keeps the sale's line order
                payload = raw.lines.get(line.sale_line_id) or {}
                record.update(self.field_map.added_values(
                    mapping.LINE, {**sources, "line": payload, "item": payload.get("Item")}))

    def _sale_plan(self, sale: Sale, transaction: dict, lines: list, match: str, account_id: str | None,
                   reason: str, action: str) -> SalePlan:
        added = {a.name: transaction.get(a.name) for a in self.field_map.additions.get(mapping.TRANSACTION, ())}
        return SalePlan(sale.sale_id, transaction[mapping.SALE_KEY], sale.ticket_number, transaction["Status__c"],
                        transaction["Total__c"], len(lines), match, account_id, self.field_map.in_org_names(reason),
                        action, added=added or None)


def account_write(customer_key: str, customer: Customer, resolution: Resolution, sale_keys: tuple[str, ...], *,
                  account_id: str, record_type_id: Callable[[], str], enrich_profiles: bool, field_map: FieldMap,
                  added: dict[str, Any] | None = None) -> Write | None:
    """The account write a customer's resolution calls for, whether the customer came with a sale or alone
    (customer_feed.py): create the Person Account (with the mapping file's `added` fields), or stamp the key on
    the matched one and (with LSPOS_ENRICH_PROFILES) fill its empty profile fields; or nothing."""
    profile = mapping.profile_fields(customer, enrich_profiles)
    if resolution.create:
        record = mapping.person_account_record(customer, account_id, record_type_id(), {**profile, **(added or {})})
        return Write(CREATE_ACCOUNTS, {k: v for k, v in record.items() if v is not None}, sale_keys, customer_key)
    fill = _blanks(customer_key, resolution, profile, field_map) if enrich_profiles else {}
    if not (resolution.stamp_key or fill):
        return None
    record = {"attributes": {"type": mapping.ACCOUNT}, "id": resolution.account_id, **fill}
    if resolution.stamp_key:
        record[mapping.CUSTOMER_KEY] = customer_key
    return Write(UPDATE_ACCOUNTS, record, sale_keys, customer_key, tuple(fill))


def _blanks(customer_key: str, resolution: Resolution, profile: dict[str, Any], field_map: FieldMap) -> dict[str, Any]:
    """What enrichment fills on the matched account: its empty fields that the mapping writes, and only from the
    customer the account is keyed to, already or by this write. Another client matched to it (a couple sharing a
    phone) is linked and fills nothing: one customer per account, whose later lookups see what it filled, so no
    field is filled twice in a run."""
    account = resolution.account
    if account is None or not (resolution.stamp_key or account.customer_key == customer_key):
        return {}
    return {name: profile[name] for name in field_map.enrichable() if name in profile and not account.profile.get(name)}
