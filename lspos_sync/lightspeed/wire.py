"""The Lightspeed wire format's shapes that need no model to read: a lone child or a list, a relation's wrapper,
a flag sent as a string, a payload kept as sent (RawSale), and the error a payload that does not read raises.

Kept apart from the pydantic models (`models.py`) so that a run that reads no sale never imports pydantic:
a no-op sync's whole time is its start-up (docs/performance.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class InvalidPayload(ValueError):
    """A payload the models cannot read: `where` (a dotted path, as Lightspeed names the fields) and `problem`."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where, self.problem = where, problem

    @classmethod
    def of(cls, error: ValidationError, payload: Any) -> "InvalidPayload":
        """The first problem pydantic found, at the path of the payload as sent, with the value sent."""
        first = error.errors(include_url=False)[0]
        problem = _PROBLEMS.get(first["type"], first["msg"])
        value = first.get("input")
        if first["type"] != "missing" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            problem += f": {str(value)[:40]!r}"
        return cls(_where(payload, first["loc"]), problem)


# Worded as the reasons already parked in state stores and quoted in the docs.
_PROBLEMS = {"decimal_parsing": "Invalid decimal string", "finite_number": "not a finite number",
             "int_parsing": "Expected `int`, got `str`"}


def _where(payload: Any, loc: tuple[int | str, ...]) -> str:
    """pydantic's `("SaleLines", 1, "unitPrice")` named as Lightspeed sent it, `SaleLines.SaleLine[1].unitPrice`:
    a relation's wrapper named with its child, a lone child (read as a one-element list) without an index."""
    parts: list[str] = []
    for step in loc:
        if isinstance(step, int):
            if isinstance(payload, dict):  # a relation's wrapper: {"SaleLine": {...} or [...]}
                child = next((key for key, value in payload.items() if isinstance(value, (dict, list))), None)
                if child is None:
                    break
                parts.append(child)
                payload = payload[child]
            if isinstance(payload, list):
                parts[-1] += f"[{step}]"
                payload = payload[step] if step < len(payload) else None
        else:
            parts.append(step)
            payload = payload.get(step) if isinstance(payload, dict) else None
    return ".".join(parts)


def one_or_many(value: Any, key: str) -> list[Any]:
    """`{"SaleLine": {...}}`, `{"SaleLine": [...]}`, `""`, None or absent -> a list of children."""
    if isinstance(value, dict):
        value = value.get(key)
    return _listed(value)


def _listed(value: Any) -> list[Any]:
    """A lone child or a list of them ("" or None: none) as a list."""
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1")


@dataclass(frozen=True)
class RawSale:
    """A Sale payload's parts as Lightspeed sent them, for the fields a mapping file adds by attribute name:
    the same quirks absorbed as in the models (a lone child, "" for none, the archived flag as a string)."""

    sale: dict[str, Any]
    customer: dict[str, Any] | None  # when loaded with the sale
    payment: dict[str, Any] | None  # the first non-archived SalePayment
    lines: dict[int, dict[str, Any]]  # SaleLine by saleLineID

    @classmethod
    def of(cls, payload: dict[str, Any]) -> "RawSale":
        payments = [p for p in one_or_many(payload.get("SalePayments"), "SalePayment")
                    if isinstance(p, dict) and not _boolean(p.get("archived", False))]
        lines = {}
        for line in one_or_many(payload.get("SaleLines"), "SaleLine"):
            if isinstance(line, dict) and str(line.get("saleLineID", "")).strip().isdigit():
                lines[int(str(line["saleLineID"]).strip())] = line
        return cls(payload, cls.customer_of(payload), payments[0] if payments else None, lines)

    @staticmethod
    def customer_of(payload: dict[str, Any]) -> dict[str, Any] | None:
        """The Customer loaded with the sale ("" or absent when there is none)."""
        customer = payload.get("Customer")
        return customer if isinstance(customer, dict) else None
