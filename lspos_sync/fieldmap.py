"""The org's names for the data model: the contract's defaults, renamed, switched off or extended by a
TOML mapping file (`--mapping PATH` / LSPOS_MAPPING), and checked against the org's describe.

Everything inside lspos-sync speaks the contract's names (`Sales_Transaction__c`, `Total__c`); only the
Salesforce boundary translates: outgoing records and SOQL to the org's names, query rows back. Fields
added by the mapping are filled from Lightspeed attributes (`sale.registerID`) and carry their org name
from the start.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lspos_sync.errors import ConfigError

if TYPE_CHECKING:
    from lspos_sync.config import Settings
from lspos_sync.mapping import (ACCOUNT, CUSTOMER_KEY, ENRICHABLE, LINE, LINE_KEY, ROLLUP_FIELDS, SALE_KEY,
                                TRANSACTION, clean_text, money, salesforce_datetime)

# Every field lspos-sync writes, by object, with its kind: the expected Salesforce type family.
DEFAULT_FIELDS: dict[str, dict[str, str]] = {
    ACCOUNT: {
        "RecordTypeId": "reference", "FirstName": "text", "LastName": "text", "PersonEmail": "text",
        "PersonMobilePhone": "text", "Phone": "text", CUSTOMER_KEY: "key",
        **{name: "text" for name in ENRICHABLE if name not in ("PersonEmail", "PersonMobilePhone", "Phone")},
        "PersonBirthdate": "date",
        **dict(zip(ROLLUP_FIELDS, ("currency", "number", "datetime", "datetime"))),
    },
    TRANSACTION: {
        SALE_KEY: "key", "Account__c": "reference", "Match_Status__c": "text", "Ticket_Number__c": "text",
        "Transaction_Date__c": "datetime", "Status__c": "text", "Shop_Name__c": "text", "Subtotal__c": "currency",
        "Discount__c": "currency", "Tax__c": "currency", "Total__c": "currency", "Amount_Paid__c": "currency",
        "Payment_Methods__c": "text", "LS_Updated_At__c": "datetime",
    },
    LINE: {
        LINE_KEY: "key", "Sales_Transaction__c": "reference", "SKU__c": "text", "Product_Name__c": "text",
        "Category__c": "text", "Quantity__c": "number", "Unit_Price__c": "currency", "Discount__c": "currency",
        "Tax__c": "currency", "Line_Total__c": "currency",
    },
}
# Lookups, and the object each points at; written as `<field minus __c>__r` references too.
REFERENCES = {(ACCOUNT, "RecordTypeId"): "RecordType", (TRANSACTION, "Account__c"): ACCOUNT,
              (LINE, "Sales_Transaction__c"): TRANSACTION}
# Keys and links the sync cannot work without; LastName because Salesforce requires it on a Person Account.
LOCKED = frozenset({(ACCOUNT, CUSTOMER_KEY), (ACCOUNT, "RecordTypeId"), (ACCOUNT, "LastName"),
                    (TRANSACTION, SALE_KEY), (TRANSACTION, "Account__c"),
                    (LINE, LINE_KEY), (LINE, "Sales_Transaction__c")})
RENAMEABLE_OBJECTS = (TRANSACTION, LINE)
SOURCES = ("sale", "line", "item", "customer", "shop", "payment")
# Which sources make sense on which object: a line has its sale around it, an account only its customer.
_SOURCES_FOR = {ACCOUNT: ("customer",), TRANSACTION: ("sale", "customer", "shop", "payment"), LINE: SOURCES}
TYPES = ("text", "number", "currency", "datetime", "boolean")
# Salesforce describe types each kind may be written to.
_COMPATIBLE = {
    "text": {"string", "textarea", "picklist", "email", "phone", "url", "combobox", "encryptedstring"},
    "number": {"double", "int", "long", "percent", "currency"},
    "currency": {"currency", "double"},
    "datetime": {"datetime"},
    "date": {"date"},
    "boolean": {"boolean"},
    "key": {"string"},
    "reference": {"reference"},
}
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_LITERAL = re.compile(r"('(?:\\.|[^'\\])*')")
_IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_FROM = re.compile(r"\bFROM\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)


@dataclass(frozen=True)
class Addition:
    """A field the mapping adds: its org name, where its value comes from, and how it is written."""

    name: str
    source: str  # e.g. "sale.registerID"
    type: str

    @property
    def entity(self) -> str:
        return self.source.split(".", 1)[0]

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.source.split(".")[1:])


@dataclass
class FieldMap:
    """Default names -> the org's names; switched-off fields; added fields. The default map is the identity."""

    objects: dict[str, str] = field(default_factory=dict)
    renames: dict[tuple[str, str], str] = field(default_factory=dict)
    off: frozenset[tuple[str, str]] = frozenset()
    additions: dict[str, tuple[Addition, ...]] = field(default_factory=dict)
    source: Path | None = None
    lengths: dict[tuple[str, str], int] = field(default_factory=dict)  # text lengths from the describe

    def __post_init__(self) -> None:
        self.identity = not (self.objects or self.renames or self.off or self.additions)
        # Changes when what is written changes, so that sales are written again after a mapping change.
        self.fingerprint = "" if self.identity else \
            hashlib.sha256(json.dumps(self.describe()["objects"], sort_keys=True).encode()).hexdigest()[:12]
        self._reverse_objects = {target.lower(): default for default, target in self.objects.items()}
        self._names = {obj: {f: self.field(obj, f) for f in DEFAULT_FIELDS[obj]} for obj in DEFAULT_FIELDS}
        self._reverse = {obj: {target: f for f, target in names.items()} for obj, names in self._names.items()}
        # "Account__r" -> ("<org field minus __c>__r", the object it points at)
        self._relationships = {obj: {_relationship(f): (_relationship(self.field(obj, f)), target)
                                     for (o, f), target in REFERENCES.items() if o == obj} for obj in DEFAULT_FIELDS}

    # -- names
    def obj(self, default: str) -> str:
        return self.objects.get(default, default)

    def field(self, obj: str, default: str) -> str:
        return self.renames.get((obj, default), default)

    def written(self, obj: str) -> list[str]:
        """The default names of the contract fields written on `obj` (switched-off ones left out)."""
        return [f for f in DEFAULT_FIELDS[obj] if (obj, f) not in self.off]

    def is_on(self, obj: str, default: str) -> bool:
        return (obj, default) not in self.off

    def enrichable(self) -> tuple[str, ...]:
        """The profile fields LSPOS_ENRICH_PROFILES may fill and the lookups read for it: those not switched off."""
        return tuple(f for f in ENRICHABLE if self.is_on(ACCOUNT, f))

    @property
    def needs_raw(self) -> bool:
        """Whether added fields need the Lightspeed payloads as sent (not only the parsed models)."""
        return any(self.additions.values())


    # -- translation at the Salesforce boundary
    def outgoing(self, obj: str, record: dict[str, Any]) -> dict[str, Any]:
        """A record in default names (plus added fields) -> the org's names, switched-off fields dropped."""
        if self.identity:
            return record
        names = self._names[obj]
        relationships = self._relationships[obj]
        result: dict[str, Any] = {}
        for name, value in record.items():
            if name == "attributes":
                result[name] = {**value, "type": self.obj(value.get("type", obj))}
            elif name in relationships:
                relationship, target = relationships[name]
                result[relationship] = {self.field(target, k): v for k, v in value.items()}
            elif name in names:
                if (obj, name) not in self.off:
                    result[names[name]] = value
            else:
                result[name] = value  # "id", and the added fields, already in the org's names
        return result

    def incoming(self, obj: str, row: dict[str, Any]) -> dict[str, Any]:
        """A query row in the org's names -> default names."""
        if self.identity:
            return row
        reverse = self._reverse[obj]
        return {reverse.get(name, name): value for name, value in row.items()}

    def soql(self, statement: str) -> tuple[str, str | None]:
        """A statement written in default names -> the org's names, and the default object it reads.
        Only identifiers outside string literals are renamed, those of the object after FROM."""
        # Ours name the object before any literal: the text before the first quote is enough, and a 90,000-character
        # lookup is not scanned for literals.
        found = _FROM.search(statement.split("'", 1)[0]) or _FROM.search(_LITERAL.sub("''", statement))
        obj = found.group(1) if found else None
        if obj not in DEFAULT_FIELDS:
            return statement, None
        if self.identity:
            return statement, obj
        names = {**self._names[obj], obj: self.obj(obj)}
        parts = _LITERAL.split(statement)
        for i in range(0, len(parts), 2):  # even parts are outside literals
            parts[i] = _renamed(parts[i], names)
        return "".join(parts), obj

    def in_org_names(self, text: str) -> str:
        """A sentence of ours naming Account fields (a match reason), with the org's names for renamed ones."""
        if self.identity:
            return text
        return _renamed(text, self._names[ACCOUNT])

    def object_of(self, target: str) -> str:
        return self._reverse_objects.get(target.lower(), target)

    # -- added fields
    def added_values(self, obj: str, sources: dict[str, Any]) -> dict[str, Any]:
        """The added fields of `obj`, filled from the raw Lightspeed payloads in `sources`."""
        values = {}
        for addition in self.additions.get(obj, ()):
            raw = _dig(sources.get(addition.entity), addition.path)
            values[addition.name] = self._convert(obj, addition, raw)
        return values

    def _convert(self, obj: str, addition: Addition, raw: Any) -> Any:
        if raw is None or raw == "" or isinstance(raw, (dict, list)):
            return None
        text = str(raw).strip()
        if text == "0" and addition.path[-1].endswith("ID"):
            return None  # a foreign key's "no key" (fact sheet §4.3), as the models read it
        try:
            if addition.type == "text":
                value = clean_text(text, "")
                limit = self.lengths.get((obj, addition.name))
                if value and limit:
                    value = value[:limit].rstrip() or None
                return value
            if addition.type == "boolean":
                return text.lower() in ("true", "1")
            if addition.type == "datetime":
                return salesforce_datetime(_moment(text))
            number = Decimal(text)
            if not number.is_finite():
                return None
            value = money(number) if addition.type == "currency" else float(number)
            return value if math.isfinite(value) else None  # "1e400" is no float: JSON has no Infinity
        except (InvalidOperation, ValueError):
            return None  # not a number or a time: left empty rather than failing the sale

    # -- describe
    def describe(self) -> dict[str, Any]:
        """The effective mapping, for `mapping show` and the fingerprint."""
        objects = {}
        for obj, fields in DEFAULT_FIELDS.items():
            objects[obj] = {
                "object": self.obj(obj),
                "fields": {f: (None if (obj, f) in self.off else self.field(obj, f)) for f in fields},
                "added": {a.name: {"from": a.source, "type": a.type} for a in self.additions.get(obj, ())},
            }
        return {"source": str(self.source) if self.source else None, "objects": objects}

    def changes(self) -> list[str]:
        """What the mapping changes, one line each, in the admin's terms (for dry-run and `mapping show`)."""
        lines = [f"object {default} -> {target}" for default, target in self.objects.items()]
        for obj, fields in DEFAULT_FIELDS.items():
            for name in fields:
                if (obj, name) in self.off:
                    lines.append(f"field {obj}.{name}: switched off")
                elif (obj, name) in self.renames:
                    lines.append(f"field {obj}.{name} -> {self.obj(obj)}.{self.renames[(obj, name)]}")
            lines += [f"field {self.obj(obj)}.{a.name} added, from {a.source} ({a.type})"
                      for a in self.additions.get(obj, ())]
        return lines

    def problems(self, describes: dict[str, dict[str, Any] | None], fields: dict[str, list[str]]) -> list[str]:
        """What in the org does not fit: one line per problem. `describes` maps each default object to its
        org describe (None: no such object); `fields` lists the default names that will be written."""
        lines = []
        for obj, describe in describes.items():
            target = self.obj(obj)
            label = target if target == obj else f"{target} (for {obj})"
            if describe is None:
                lines.append(f"mapping: object {label} does not exist in Salesforce or is not visible to the user")
                continue
            org = {f["name"].lower(): f for f in describe.get("fields", [])}
            wanted = [(self.field(obj, f), f, DEFAULT_FIELDS[obj][f]) for f in fields.get(obj, [])]
            wanted += [(a.name, a.name, a.type) for a in self.additions.get(obj, ())]
            for name, default, kind in wanted:
                where = f"{target}.{name}" + (f" (for {default})" if name != default else "")
                found = org.get(name.lower())
                if found is None:
                    lines.append(f"mapping: field {where} does not exist in Salesforce or is not visible to the user")
                    continue
                if found.get("type") not in _COMPATIBLE[kind]:
                    lines.append(f"mapping: field {where} is {found.get('type')} in Salesforce; "
                                 f"a {kind} value cannot be written to it")
                elif kind == "reference" and (expected := self.obj(REFERENCES[(obj, default)])) not in (
                        found.get("referenceTo") or []):
                    lines.append(f"mapping: field {where} looks up {', '.join(found.get('referenceTo') or [])}, "
                                 f"not {expected}")
                elif kind == "key" and not found.get("externalId"):
                    lines.append(f"mapping: field {where} is not an External ID; lspos-sync upserts on it")
                elif kind == "key" and not found.get("unique"):
                    # upserts racing on a key that is not Unique both create (fact sheet §1.3, §4): two records
                    lines.append(f"mapping: field {where} is an External ID but not Unique; lspos-sync upserts on "
                                 "it, and two upserts of one new key would make two records")
                if default not in ROLLUP_FIELDS and not found.get("createable"):
                    lines.append(f"mapping: field {where} is not createable (read-only, a formula, or no "
                                 "field-level access for the integration user)")
                elif kind != "reference" and not found.get("updateable"):
                    # a master-detail link is set once; everything else is updated when a sale changes
                    lines.append(f"mapping: field {where} is not updateable; lspos-sync updates what it wrote")
        return lines

    def text_lengths(self, describes: dict[str, dict[str, Any] | None]) -> dict[tuple[str, str], int]:
        """(default object, org field name) -> the length of each added text field, from the describe."""
        lengths = {}
        for obj, describe in describes.items():
            org = {f["name"].lower(): f for f in (describe or {}).get("fields", [])}
            for addition in self.additions.get(obj, ()):
                found = org.get(addition.name.lower())
                if addition.type == "text" and found and found.get("length"):
                    lengths[(obj, addition.name)] = int(found["length"])
        return lengths


def for_settings(settings: Settings) -> FieldMap:
    """The mapping file's names, with what LSPOS_ROLLUPS needs checked against it."""
    names = load(settings.mapping_path)
    if settings.rollups:
        needed = [f for f in ("Total__c", "Status__c", "Transaction_Date__c") if not names.is_on(TRANSACTION, f)]
        if needed:
            raise ConfigError(f"LSPOS_ROLLUPS needs {', '.join(f'{TRANSACTION}.{f}' for f in needed)}, which the "
                              "mapping file switches off")
    return names


def written_fields(settings: Settings, names: FieldMap) -> dict[str, list[str]]:
    """The contract fields (default names) this configuration writes, by object."""
    always = ("PersonEmail", "PersonMobilePhone", "Phone")
    account = [f for f in names.written(ACCOUNT) if f not in ROLLUP_FIELDS and (
        settings.enrich_profiles or f not in ENRICHABLE or f in always)]
    if settings.rollups:
        account += [f for f in ROLLUP_FIELDS if names.is_on(ACCOUNT, f)]
    return {ACCOUNT: account, TRANSACTION: names.written(TRANSACTION), LINE: names.written(LINE)}


def check_org(settings: Settings, names: FieldMap,
              describe: Callable[[list[str]], dict[str, dict[str, Any] | None]]) -> None:
    """The mapping (and the roll-up fields) against the org's describe (`SalesforceClient.describe`, one API
    call): every problem is a line of one ConfigError (exit 2), raised before anything is written. The
    lengths of added text fields are kept, to cut their values."""
    objects = (ACCOUNT, TRANSACTION, LINE)
    described = describe([names.obj(obj) for obj in objects])
    by_default = {obj: described[names.obj(obj)] for obj in objects}
    problems = names.problems(by_default, written_fields(settings, names))
    if problems:
        raise ConfigError("\n".join(problems))
    names.lengths.update(names.text_lengths(by_default))


def load(path: Path | None) -> FieldMap:
    """The mapping file at `path` (None: the contract's defaults). Every problem is one line of the error."""
    if path is None:
        return DEFAULT
    import tomllib

    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"mapping: cannot read {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"mapping: {path} is not valid TOML: {error}") from None
    problems: list[str] = []
    for key in document:
        if key not in ("objects", "fields"):
            problems.append(f"mapping: unknown table [{key}] (expected [objects] and [fields.<object>])")
    objects = _objects(document.get("objects", {}), problems)
    renames: dict[tuple[str, str], str] = {}
    off: set[tuple[str, str]] = set()
    additions: dict[str, list[Addition]] = {}
    tables = document.get("fields", {})
    if not isinstance(tables, dict):
        problems.append("mapping: [fields] must hold one table per object, e.g. [fields.Sales_Transaction__c]")
        tables = {}
    for obj, entries in tables.items():
        if obj not in DEFAULT_FIELDS:
            problems.append(f"mapping: [fields.{obj}]: unknown object; use the contract's names: "
                            f"{', '.join(DEFAULT_FIELDS)}")
            continue
        if not isinstance(entries, dict):
            problems.append(f"mapping: [fields.{obj}] must be a table")
            continue
        for name, value in entries.items():
            where = f"mapping: [fields.{obj}] {name}"
            if name in DEFAULT_FIELDS[obj]:
                if value is False:
                    if (obj, name) in LOCKED:
                        problems.append(f"{where}: cannot be switched off (the sync needs this key or link)")
                    else:
                        off.add((obj, name))
                elif isinstance(value, str) and _API_NAME.match(value):
                    if (obj, name) != ("Account", "RecordTypeId") and value != name:
                        renames[(obj, name)] = value
                    elif value != name:
                        problems.append(f"{where}: RecordTypeId cannot be renamed")
                else:
                    problems.append(f"{where}: rename it with a field API name (\"New_Name__c\") or switch it off "
                                    "with false")
            elif isinstance(value, dict):
                addition = _addition(obj, name, value, where, problems)
                if addition:
                    additions.setdefault(obj, []).append(addition)
            else:
                problems.append(f"{where}: not a field lspos-sync writes on {obj}; to add it, give "
                                "{ from = \"sale.<attribute>\", type = \"text\" }")
    fieldmap = FieldMap(objects, renames, frozenset(off), {k: tuple(v) for k, v in additions.items()}, path)
    for obj in DEFAULT_FIELDS:
        names = [fieldmap.field(obj, f) for f in fieldmap.written(obj)] + [a.name for a in additions.get(obj, ())]
        for duplicate in sorted({n for n in names if [m.lower() for m in names].count(n.lower()) > 1}):
            problems.append(f"mapping: [fields.{obj}]: {duplicate} is the target of more than one field")
    if problems:
        raise ConfigError("\n".join(problems))
    return fieldmap


def _objects(table: Any, problems: list[str]) -> dict[str, str]:
    if not isinstance(table, dict):
        problems.append("mapping: [objects] must map contract object names to the org's, e.g. "
                        'Sales_Transaction__c = "POS_Sale__c"')
        return {}
    objects = {}
    for default, target in table.items():
        if default == ACCOUNT:
            problems.append("mapping: [objects] Account: Person Accounts are always Account; it cannot be renamed")
        elif default not in RENAMEABLE_OBJECTS:
            problems.append(f"mapping: [objects] {default}: unknown object; renameable: {', '.join(RENAMEABLE_OBJECTS)}")
        elif not isinstance(target, str) or not _API_NAME.match(target):
            problems.append(f"mapping: [objects] {default}: give the object's API name, e.g. \"POS_Sale__c\"")
        elif target != default:
            objects[default] = target
    if len({t.lower() for t in objects.values()}) < len(objects):
        problems.append("mapping: [objects]: two objects renamed to the same name")
    return objects


def _addition(obj: str, name: str, value: dict, where: str, problems: list[str]) -> Addition | None:
    unknown = sorted(set(value) - {"from", "type"})
    source, kind = value.get("from"), value.get("type", "text")
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (expected from and type)")
    elif not _API_NAME.match(name):
        problems.append(f"{where}: not a field API name")
    elif not isinstance(source, str) or "." not in source or not all(source.split(".")):
        problems.append(f"{where}: from must be <source>.<Lightspeed attribute>, e.g. \"sale.registerID\"")
    elif source.split(".", 1)[0] not in SOURCES:
        problems.append(f"{where}: unknown source {source.split('.', 1)[0]!r} (one of {', '.join(SOURCES)})")
    elif source.split(".", 1)[0] not in _SOURCES_FOR[obj]:
        problems.append(f"{where}: {source.split('.', 1)[0]}.* is not available on {obj} "
                        f"(use {', '.join(s + '.*' for s in _SOURCES_FOR[obj])})")
    elif kind not in TYPES:
        problems.append(f"{where}: unknown type {kind!r} (one of {', '.join(TYPES)})")
    else:
        return Addition(name, source, kind)
    return None


def _renamed(text: str, names: dict[str, str]) -> str:
    """`text` with each identifier that `names` knows replaced by its value."""
    return _IDENTIFIER.sub(lambda m: names.get(m.group(0), m.group(0)), text)


def _relationship(field_name: str) -> str:
    return field_name[:-3] + "__r" if field_name.endswith("__c") else field_name.removesuffix("Id")


def _dig(payload: Any, path: tuple[str, ...]) -> Any:
    """The value at an admin's dotted path into a payload, `payload["PaymentType"]["name"]`; where the path
    meets a list (a relation with several children), its first element."""
    value = payload
    for step in path:
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def _moment(text: str) -> datetime:
    """Lightspeed's times (`2026-03-01T09:30:00+00:00`); one without an offset is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


DEFAULT = FieldMap()
