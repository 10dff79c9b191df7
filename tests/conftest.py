"""Shared fixtures: both emulators on loopback, and the real `lspos-sync` program run against them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from lspos_sync.emulators.lightspeed import LightspeedEmulator
from lspos_sync.emulators.salesforce import SalesforceEmulator


@pytest.fixture
def lightspeed():
    with LightspeedEmulator() as emulator:
        yield emulator


@pytest.fixture
def salesforce(tmp_path):
    with SalesforceEmulator(tmp_path / "tls") as emulator:
        yield emulator


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)


class Cli:
    """Runs the installed program as cron would: a fresh process, configuration in the environment."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def _environment(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTSPEED_", "SALESFORCE_", "LSPOS_"))}
        return {**env, **self.env, **(extra or {})}

    def __call__(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
                 timeout: float = 120, constants: dict[str, int] | None = None) -> Result:
        """`constants` ("module.NAME": value) are set in the program's modules before it runs, e.g. smaller
        batches, so that a test shows with a few hundred sales what happens with many thousands."""
        done = subprocess.run([sys.executable, *_program(constants), *args], env=self._environment(env),
                              cwd=self.cwd, capture_output=True, text=True, input=input, timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr)

    def start(self, *args: str, env: dict[str, str] | None = None,
              constants: dict[str, int] | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, *_program(constants), *args], env=self._environment(env),
                                cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _program(constants: dict[str, int] | None) -> list[str]:
    if not constants:
        return ["-m", "lspos_sync"]
    return ["-c", "import importlib, sys\n" + "".join(
        f"setattr(importlib.import_module('lspos_sync.{name.rsplit('.', 1)[0]}'), '{name.rsplit('.', 1)[1]}', "
        f"{value!r})\n" for name, value in constants.items()) + "from lspos_sync.cli import run\nrun()"]


@pytest.fixture
def state_path(tmp_path) -> Path:
    return tmp_path / "state" / "lspos.db"


@pytest.fixture
def cli(lightspeed, salesforce, state_path, tmp_path) -> Cli:
    env = {**lightspeed.env(), **salesforce.env(), "LSPOS_STATE_PATH": str(state_path),
           "LSPOS_SYNC_START": (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()}
    workdir = tmp_path / "work"
    workdir.mkdir()
    return Cli(env, workdir)


@dataclass
class Boutique:
    """A small shop seeded in the Lightspeed emulator: what most tests sell from."""

    shop: int
    scarf: int
    bag: int
    card: int
    cash: int


@pytest.fixture
def boutique(lightspeed) -> Boutique:
    shop = lightspeed.add_shop("Rue Saint-Honoré", "Europe/Paris")
    accessories = lightspeed.add_category("Accessories")
    scarf = lightspeed.add_item("Silk scarf", custom_sku="SCARF-01", category_id=accessories)
    bag = lightspeed.add_item("Leather bag", category_id=lightspeed.add_category("Leather goods"))
    return Boutique(shop, scarf, bag, lightspeed.add_payment_type("Visa"),
                    lightspeed.add_payment_type("Cash", type="cash"))


def sell(lightspeed, boutique: Boutique, customer_id=None, lines=((1, "120.00"),), pay=True, **kwargs) -> int:
    """A sale of the scarf (and the bag for a second line), paid by card."""
    items = [boutique.scarf, boutique.bag]
    sale_lines = [{"item_id": items[i % 2], "quantity": qty, "unit_price": price, "tax1": "0"}
                  for i, (qty, price) in enumerate(lines)]
    total = sum(qty * float(price) for qty, price in lines)
    payments = [{"payment_type_id": boutique.card, "amount": f"{total:.2f}"}] if pay else []
    return lightspeed.add_sale(boutique.shop, sale_lines, customer_id=customer_id, payments=payments, **kwargs)


def two_clients_sharing_a_home_phone(lightspeed, salesforce) -> tuple[str, int, int]:
    """One Person Account typed in the CRM with only a home number; two clients at the till (a couple) share it.
    Both match that one account by phone; the first gets the key (docs/sync-rules.md). The account's Id, Ana's and
    Bo's customer IDs."""
    typed = salesforce.insert("Account", {"RecordTypeId": salesforce.person_account_record_type_id,
                                          "LastName": "Lima", "Phone": "415-555-0100"})
    ana = lightspeed.add_customer("Ana", "Lima", email="ana@example.com", phones={"Home": "415-555-0100"},
                                  dob=datetime(1981, 4, 9, 4, tzinfo=timezone.utc))
    bo = lightspeed.add_customer("Bo", "Lima", email="bo@example.com", phones={"Home": "415-555-0100"},
                                 dob=datetime(1979, 1, 2, 5, tzinfo=timezone.utc))
    return typed, ana, bo


def by_key(records: list[dict], field: str) -> dict[str, dict]:
    return {r[field]: r for r in records}


def edit_by_hand(salesforce, sobject: str, record_id: str, fields: dict) -> None:
    """A record edited in Salesforce as an admin does, through the REST API (not the emulator's own door)."""
    import ssl

    import httpx

    response = httpx.patch(f"{salesforce.instance_url}/services/data/v62.0/sobjects/{sobject}/{record_id}", json=fields,
                           headers={"Authorization": f"Bearer {salesforce.env()['SALESFORCE_ACCESS_TOKEN']}"},
                           verify=ssl.create_default_context(cafile=str(salesforce.ca_bundle)))
    assert response.status_code == 204, response.text


def delete_by_hand(salesforce, sobject: str, record_id: str) -> None:
    """A record deleted in Salesforce as an admin does, through the REST API (a transaction's lines go with it)."""
    import ssl

    import httpx

    response = httpx.delete(f"{salesforce.instance_url}/services/data/v62.0/sobjects/{sobject}/{record_id}",
                            headers={"Authorization": f"Bearer {salesforce.env()['SALESFORCE_ACCESS_TOKEN']}"},
                            verify=ssl.create_default_context(cafile=str(salesforce.ca_bundle)))
    assert response.status_code == 204, response.text


def query_subrequests(salesforce) -> list[dict]:
    """The SOQL subrequests of every `/composite` Salesforce received, each with its httpStatusCode."""
    return [s for r in salesforce.requests if r.path.endswith("/composite") for s in r.subrequests
            if "/query?" in s["url"]]


def soql_of(subrequest: dict) -> str:
    return parse_qs(urlsplit(subrequest["url"]).query)["q"][0]
