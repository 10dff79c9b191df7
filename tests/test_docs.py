"""The documentation keeps up with the code: the CLI reference is generated, and the hand-written pages
name every variable the code reads and every field the contract defines."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from lspos_sync import clidoc
from lspos_sync.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Contract §3: the Salesforce fields the tool writes, object by object.
CONTRACT_FIELDS = (
    "RecordTypeId", "FirstName", "LastName", "PersonEmail", "PersonMobilePhone", "Phone", "LS_Customer_ID__c",
    "LS_Sale_ID__c", "Account__c", "Match_Status__c", "Ticket_Number__c", "Transaction_Date__c", "Status__c",
    "Shop_Name__c", "Subtotal__c", "Discount__c", "Tax__c", "Total__c", "Amount_Paid__c", "Payment_Methods__c",
    "LS_Updated_At__c",
    "LS_Sale_Line_ID__c", "Sales_Transaction__c", "SKU__c", "Product_Name__c", "Category__c", "Quantity__c",
    "Unit_Price__c", "Line_Total__c",
)


def _commands() -> list[click.Context]:
    return clidoc._walk(click.Context(main, info_name=clidoc.PROGRAM))


def test_cli_reference_is_generated_from_the_commands():
    assert (DOCS / "cli.md").read_text() == clidoc.render(), \
        "docs/cli.md is out of date: run `python -m lspos_sync.clidoc > docs/cli.md`"


@pytest.mark.parametrize("context", _commands(), ids=lambda context: context.command_path)
def test_every_command_has_help(context):
    assert (context.command.help or "").strip(), f"`{context.command_path}` has no help text (give it a docstring)"


def test_every_variable_the_code_reads_is_documented():
    source = (ROOT / "lspos_sync" / "config.py").read_text()
    # a name ending in "_" is the prefix of per-account names (LIGHTSPEED_ACCOUNT_<ID>_...), documented as such
    variables = sorted({name for name in re.findall(r"\b(?:LIGHTSPEED|SALESFORCE|LSPOS)_[A-Z0-9_]+\b", source)
                        if not name.endswith("_")})
    assert variables, "no variable names found in config.py"
    page = (DOCS / "configuration.md").read_text()
    missing = [name for name in variables if f"`{name}`" not in page]
    if "LIGHTSPEED_ACCOUNT_{" in source:
        missing += [] if "`LIGHTSPEED_ACCOUNT_<ID>_REFRESH_TOKEN`" in page else ["LIGHTSPEED_ACCOUNT_<ID>_..."]
    assert not missing, f"docs/configuration.md does not describe {', '.join(missing)}"


def test_env_example_lists_every_variable_the_code_reads():
    source = (ROOT / "lspos_sync" / "config.py").read_text()
    variables = {name for name in re.findall(r"\b(?:LIGHTSPEED|SALESFORCE|LSPOS)_[A-Z0-9_]+\b", source)
                 if not name.endswith("_")}
    template = (ROOT / ".env.example").read_text()
    missing = sorted(name for name in variables if not re.search(rf"^#? ?{name}=", template, re.M))
    assert not missing, f".env.example (which the README says lists them all) lacks {', '.join(missing)}"


def test_every_contract_field_is_in_the_field_mapping():
    page = (DOCS / "field-mapping.md").read_text()
    missing = [name for name in CONTRACT_FIELDS if f"`{name}`" not in page]
    assert not missing, f"docs/field-mapping.md does not describe {', '.join(missing)}"


def test_the_readmes_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"run the tests \(exactly what CI runs, `\.ci/run`\):\n\n```sh\n(.+)\n```", readme).group(1)
    assert command == (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]


def _cited_tests() -> list[tuple[str, int, str | None, str]]:
    """(page, line, test file or None, test name) for each test the pages cite in backticks: `test_x.py::test_y`,
    and the bare `test_z` names after it (in the same table cell or sentence, up to a `;`), taken as of that file."""
    cited = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text, cited_file = page.read_text(), None
        for found in re.finditer(r"`([^`\n]+)`|;|\||\n\s*\n", text):
            if found.group(1) is None:
                cited_file = None
                continue
            line = text.count("\n", 0, found.start()) + 1
            named = re.fullmatch(r"(?:tests/)?(test_\w+\.py)::(test_\w+)(?:\[.*\])?", found.group(1))
            if named:
                cited_file = named.group(1)
                cited.append((page.name, line, cited_file, named.group(2)))
            elif bare := re.fullmatch(r"(test_\w+)(?:\[.*\])?", found.group(1)):
                cited.append((page.name, line, cited_file, bare.group(1)))
    return cited


def test_every_test_the_docs_cite_exists_where_they_say():
    defined = {path.name: set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
               for path in (ROOT / "tests").glob("test_*.py")}
    everywhere = set().union(*defined.values())
    cited = _cited_tests()
    wrong = [f"{page}:{line}: {file or ''}::{name}" for page, line, file, name in cited
             if name not in (defined.get(file, set()) if file else everywhere)]
    assert cited, "no test citations found in the docs"
    assert not wrong, "cited tests that do not exist there:\n" + "\n".join(wrong)
