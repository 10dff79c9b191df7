"""The Salesforce DX source under docs/salesforce deploys as shipped: every file is well-formed metadata of the
kind its name says, and the report types, reports and dashboard name only objects, fields, picklist values and
reports that the shipped metadata defines (or the standard Account fields every org has)."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import pytest

METADATA = Path(__file__).resolve().parent.parent / "docs" / "salesforce" / "force-app" / "main" / "default"
NS = "http://soap.sforce.com/2006/04/metadata"
MD = {"md": NS}

# file suffix -> root element
KINDS = {
    ".object-meta.xml": "CustomObject", ".field-meta.xml": "CustomField", ".permissionset-meta.xml": "PermissionSet",
    ".reportType-meta.xml": "ReportType", ".report-meta.xml": "Report", ".reportFolder-meta.xml": "ReportFolder",
    ".dashboard-meta.xml": "Dashboard", ".dashboardFolder-meta.xml": "DashboardFolder",
}
# Fields every object has, declared by no file
STANDARD_FIELDS = {"Id", "Name", "CreatedDate", "LastModifiedDate"}
# Standard report types the reports may use, with their object, and the standard columns of theirs they use
STANDARD_REPORT_TYPES = {"AccountList": ("Account", {"ACCOUNT.NAME", "CREATED_DATE"})}
# Lengths Salesforce refuses to deploy beyond, per file kind and element
LIMITS = {".reportType-meta.xml": {"description": 255, "label": 50},
          ".report-meta.xml": {"description": 255, "name": 40},
          ".dashboard-meta.xml": {"description": 255, "title": 80}}
# Elements of a report whose text is a column reference
COLUMN_TAGS = {"field", "column", "dateColumn", "sortColumn", "groupingColumn", "sortByName"}


def _kind(path: Path) -> str | None:
    return next((suffix for suffix in KINDS if path.name.endswith(suffix)), None)


def _text(element: ET.Element, path: str) -> str:
    return (element.findtext(path, "", MD) or "").strip()


class _Org:
    """What the shipped objects define: fields (with picklist values) per object, child relationships."""

    def __init__(self, documents: dict[Path, ET.Element]) -> None:
        self.custom_objects = {path.parent.name for path in documents if _kind(path) == ".object-meta.xml"}
        self.fields: dict[str, dict[str, set[str] | None]] = {}
        self.children: dict[tuple[str, str], str] = {}  # (parent, "Relationship__r") -> child object
        for path, root in documents.items():
            if _kind(path) != ".field-meta.xml":
                continue
            obj, name = path.parent.parent.name, _text(root, "md:fullName")
            values = {_text(v, "md:fullName") for v in root.iterfind("md:valueSet/md:valueSetDefinition/md:value", MD)}
            self.fields.setdefault(obj, {})[name] = values if _text(root, "md:type") == "Picklist" else None
            if _text(root, "md:relationshipName"):
                self.children[(_text(root, "md:referenceTo"), _text(root, "md:relationshipName") + "__r")] = obj

    def has_field(self, obj: str, name: str) -> bool:
        return name in STANDARD_FIELDS or name in self.fields.get(obj, {})


def problems(metadata: Path) -> list[str]:
    """Everything in `metadata` (a force-app/main/default folder) that would not deploy or not resolve."""
    found: list[str] = []
    documents = _documents(metadata, found)
    org = _Org(documents)
    for path, root in documents.items():
        where = path.relative_to(metadata)
        for tag, limit in LIMITS.get(_kind(path) or "", {}).items():
            if len(_text(root, f"md:{tag}")) > limit:
                found.append(f"{where}: {tag} is longer than {limit} characters")
        if _kind(path) == ".field-meta.xml" and _text(root, "md:fullName") != path.name.split(".")[0]:
            found.append(f"{where}: fullName {_text(root, 'md:fullName')} is not the file's name")
    report_types = {path.name.split(".")[0]: _report_type_columns(root, org, path.relative_to(metadata), found)
                    for path, root in documents.items() if _kind(path) == ".reportType-meta.xml"}
    reports = {f"{path.parent.name}/{path.name.split('.')[0]}": root
               for path, root in documents.items() if _kind(path) == ".report-meta.xml"}
    for path, root in documents.items():
        if _kind(path) in (".report-meta.xml", ".dashboard-meta.xml"):
            folder, kind = path.parent.name, "report" if _kind(path) == ".report-meta.xml" else "dashboard"
            if not (path.parent.parent / f"{folder}.{kind}Folder-meta.xml").exists():
                found.append(f"{path.relative_to(metadata)}: no {kind}s/{folder}.{kind}Folder-meta.xml for its folder")
        if _kind(path) == ".report-meta.xml":
            _check_report(root, org, report_types, path.relative_to(metadata), found)
        if _kind(path) == ".dashboard-meta.xml":
            _check_dashboard(root, set(reports), path.relative_to(metadata), found)
    return found


def _documents(metadata: Path, found: list[str]) -> dict[Path, ET.Element]:
    """Every file, parsed, if it is well-formed metadata of the kind its name says."""
    documents = {}
    for path in sorted(metadata.rglob("*.xml")):
        where, kind = path.relative_to(metadata), _kind(path)
        if kind is None:
            found.append(f"{where}: not a metadata file kind this project ships")
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as error:
            found.append(f"{where}: not well-formed: {error}")
            continue
        if root.tag != f"{{{NS}}}{KINDS[kind]}":
            found.append(f"{where}: root is {root.tag}, expected {KINDS[kind]} in {NS}")
            continue
        documents[path] = root
    return documents


def _report_type_columns(root: ET.Element, org: _Org, where: Path, found: list[str]) -> dict[str, tuple[str, str]]:
    """The columns a custom report type offers, as reports name them ("Table$Field"), with object and field."""
    base = _text(root, "md:baseObject")
    if base not in org.custom_objects and base != "Account":
        found.append(f"{where}: base object {base} is not a shipped object")
    tables = {base: base}
    parent, join = base, root.find("md:join", MD)
    while join is not None:
        relationship = _text(join, "md:relationship")
        child = org.children.get((tables[parent], relationship))
        if child is None:
            found.append(f"{where}: {tables[parent]} has no child relationship {relationship}")
            break
        parent = f"{parent}.{relationship}"
        tables[parent] = child
        join = join.find("md:join", MD)
    columns = {}
    for column in root.iterfind("md:sections/md:columns", MD):
        table, field = _text(column, "md:table"), _text(column, "md:field")
        if table not in tables:
            found.append(f"{where}: column {field} is on table {table}, not one of {', '.join(tables)}")
        elif not org.has_field(tables[table], field):
            found.append(f"{where}: {tables[table]} has no field {field}")
        else:
            columns[f"{table}${field}"] = (tables[table], field)
    return columns


def _check_report(root: ET.Element, org: _Org, report_types: dict[str, dict[str, tuple[str, str]]], where: Path,
                  found: list[str]) -> None:
    """Every column the report names is one of its report type's, and every picklist value it filters on exists."""
    report_type = _text(root, "md:reportType")
    if report_type.endswith("__c"):  # a custom report type: its developer name and __c
        if report_type[:-3] not in report_types:
            found.append(f"{where}: report type {report_type[:-3]} is not shipped in reportTypes/")
            return
        resolve: Callable[[str], tuple[str, str] | None] = report_types[report_type[:-3]].get
    elif report_type in STANDARD_REPORT_TYPES:
        obj, standard = STANDARD_REPORT_TYPES[report_type]

        def resolve(reference: str) -> tuple[str, str] | None:  # ACCOUNT.NAME, or Account.Custom__c
            if reference in standard:
                return obj, "Name"
            prefix, _, name = reference.partition(".")
            return (obj, name) if prefix == obj and name.endswith("__c") and org.has_field(obj, name) else None
    else:
        found.append(f"{where}: report type {report_type} is neither shipped nor a known standard one")
        return
    for element in root.iter():
        tag = element.tag.rpartition("}")[2]
        reference = re.sub(r"^\w+!", "", (element.text or "").strip())  # sortByName: "s!Field" is its sum
        if tag in COLUMN_TAGS and reference != "RowCount" and resolve(reference) is None:
            found.append(f"{where}: {tag} {reference} is not a column of report type {report_type}")
    for item in root.iterfind("md:filter/md:criteriaItems", MD):
        resolved = resolve(_text(item, "md:column"))
        allowed = org.fields.get(resolved[0], {}).get(resolved[1]) if resolved else None
        if resolved and allowed is not None and _text(item, "md:operator") in ("equals", "notEqual"):
            for value in _text(item, "md:value").split(","):
                if value not in allowed:
                    found.append(f"{where}: {value!r} is not a value of picklist {resolved[0]}.{resolved[1]}")


def _check_dashboard(root: ET.Element, reports: set[str], where: Path, found: list[str]) -> None:
    """The dashboard deploys into any org and every component shows a shipped report."""
    if _text(root, "md:dashboardType") != "LoggedInUser":
        found.append(f"{where}: dashboardType must be LoggedInUser (a running user's name differs per org)")
    components = [component for section in ("leftSection", "middleSection", "rightSection")
                  for component in root.iterfind(f"md:{section}/md:components", MD)]
    if not components:
        found.append(f"{where}: no components")
    for component in components:
        if _text(component, "md:report") not in reports:
            found.append(f"{where}: component {_text(component, 'md:header')!r} shows report "
                         f"{_text(component, 'md:report')!r}, which is not shipped")


def test_shipped_metadata_resolves() -> None:
    assert problems(METADATA) == []


def test_the_dashboards_and_reports_are_shipped() -> None:
    names = {p.relative_to(METADATA).as_posix() for p in METADATA.rglob("*.xml")}
    assert {"reportTypes/LSPOS_Sales_Transactions_with_Line_Items.reportType-meta.xml",
            "reports/LSPOS_Sync_Reports/Sales_per_Shop_per_Day.report-meta.xml",
            "reports/LSPOS_Sync_Reports/Refunds_and_Voids.report-meta.xml",
            "reports/LSPOS_Sync_Reports/Link_Quality_by_Match_Status.report-meta.xml",
            "reports/LSPOS_Sync_Reports/Top_Clients_by_Lifetime_Spend.report-meta.xml",
            "dashboards/LSPOS_Sync_Dashboards/LSPOS_Sales.dashboard-meta.xml"} <= names


def test_the_line_item_report_type_joins_through_the_declared_relationship() -> None:
    field = ET.parse(METADATA / "objects" / "Sales_Line_Item__c" / "fields" / "Sales_Transaction__c.field-meta.xml")
    report_type = ET.parse(METADATA / "reportTypes" / "LSPOS_Sales_Transactions_with_Line_Items.reportType-meta.xml")
    relationship = field.findtext("md:relationshipName", None, MD)
    assert report_type.findtext("md:join/md:relationship", None, MD) == f"{relationship}__r"
    assert report_type.findtext("md:join/md:outerJoin", None, MD) == "true"  # a sale without lines still shows


def _replace(relative: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(metadata: Path) -> None:
        path = metadata / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}: the broken copy would not be broken"
        path.write_text(text.replace(old, new, 1))
    return edit


REPORT = "reports/LSPOS_Sync_Reports/Sales_per_Shop_per_Day.report-meta.xml"
DASHBOARD = "dashboards/LSPOS_Sync_Dashboards/LSPOS_Sales.dashboard-meta.xml"
JOINED = "reportTypes/LSPOS_Sales_Transactions_with_Line_Items.reportType-meta.xml"


@pytest.mark.parametrize("breakage, expected", [
    (_replace(REPORT, "<format>", "<format"), "not well-formed"),
    (_replace(REPORT, f'xmlns="{NS}"', 'xmlns="urn:other"'), "root is"),
    (_replace(REPORT, "Sales_Transaction__c$Total__c", "Sales_Transaction__c$Grand_Total__c"),
     "field Sales_Transaction__c$Grand_Total__c is not a column"),
    (_replace(REPORT, "Sales_Transaction__c$Shop_Name__c", "Sales_Transaction__c.Shop_Name__c"), "is not a column"),
    (_replace(REPORT, "Completed,Refund", "Completed,Refunded"), "'Refunded' is not a value of picklist"),
    (_replace(REPORT, "LSPOS_Sales_Transactions__c", "LSPOS_Sales__c"), "report type LSPOS_Sales is not shipped"),
    (_replace(JOINED, "Sales_Line_Items__r</relationship>", "Lines__r</relationship>"),
     "has no child relationship Lines__r"),
    (_replace(JOINED, "<field>Category__c</field>", "<field>Family__c</field>"),
     "Sales_Line_Item__c has no field Family__c"),
    (_replace("reports/LSPOS_Sync_Reports/Top_Clients_by_Lifetime_Spend.report-meta.xml",
              "<field>Account.Purchase_Count__c</field>", "<field>Account.Visits__c</field>"), "Account.Visits__c"),
    (_replace(DASHBOARD, "LSPOS_Sync_Reports/Refunds_and_Voids", "LSPOS_Sync_Reports/Refunds"),
     "'LSPOS_Sync_Reports/Refunds', which is not shipped"),
    (_replace(DASHBOARD, "<dashboardType>LoggedInUser", "<dashboardType>SpecifiedUser"), "dashboardType"),
    (_replace(REPORT, "<name>Sales per Shop per Day", "<name>Net sales per shop and per day, refunds included"),
     "name is longer than 40 characters"),
    (lambda metadata: (metadata / "reports" / "LSPOS_Sync_Reports.reportFolder-meta.xml").unlink(),
     "no reports/LSPOS_Sync_Reports.reportFolder-meta.xml"),
], ids=["malformed", "namespace", "unknown-field", "dot-instead-of-dollar", "picklist-value", "report-type",
        "relationship", "report-type-column", "account-field", "dashboard-report", "running-user", "name-length",
        "folder"])
def test_a_broken_copy_is_caught(tmp_path: Path, breakage: Callable[[Path], None], expected: str) -> None:
    copy = tmp_path / "default"
    shutil.copytree(METADATA, copy)
    breakage(copy)
    found = problems(copy)
    assert any(expected in problem for problem in found), found
