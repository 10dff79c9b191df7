"""A parser and evaluator for the subset of SOQL that the Salesforce emulator understands."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterator, Union

MAX_QUERY_LENGTH = 100_000  # characters; Salesforce answers MALFORMED_QUERY above it


class SoqlError(Exception):
    """A query Salesforce would reject; `code` is the REST errorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Comparison:
    field: str
    op: str  # = != < > <= >= IN NOT IN LIKE
    value: Any  # literal, tuple of literals for IN, compiled regex for LIKE


@dataclass(frozen=True)
class Junction:
    op: str  # AND / OR
    parts: tuple["Expr", ...]


@dataclass(frozen=True)
class Negation:
    part: "Expr"


Expr = Union[Comparison, Junction, Negation]


@dataclass(frozen=True)
class OrderKey:
    field: str
    descending: bool
    nulls_last: bool


@dataclass
class Query:
    sobject: str
    fields: list[str]  # empty for SELECT COUNT()
    count: bool
    where: Expr | None
    order_by: list[OrderKey]
    limit: int | None

    def comparisons(self) -> Iterator[Comparison]:
        """Every field comparison in the WHERE clause (so the caller can check fields and types)."""
        stack = [self.where] if self.where is not None else []
        while stack:
            node = stack.pop()
            if isinstance(node, Comparison):
                yield node
            elif isinstance(node, Junction):
                stack.extend(node.parts)
            else:
                stack.append(node.part)

    def matches(self, get: Callable[[str], Any]) -> bool:
        """Whether a row passes WHERE; `get(path)` returns the row's value for a (dotted) field path."""
        return self.where is None or _evaluate(self.where, get)

    def order(self, rows: list[Any], get: Callable[[Any, str], Any]) -> list[Any]:
        """Rows sorted by ORDER BY; ASC puts nulls first and DESC last unless NULLS FIRST/LAST says otherwise."""
        for key in reversed(self.order_by):  # stable sorts, least significant key first
            nulls = [r for r in rows if get(r, key.field) is None]
            values = sorted((r for r in rows if get(r, key.field) is not None),
                            key=lambda r: _sortable(get(r, key.field)), reverse=key.descending)
            rows = values + nulls if key.nulls_last else nulls + values
        return rows


def parse_datetime(text: str) -> dt.datetime:
    """An ISO-8601 date or datetime as an aware UTC datetime (a bare date is midnight UTC)."""
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})(?![\d:T])
  | (?P<num>[+-]?\d+(?:\.\d+)?)
  | (?P<op><=|>=|!=|<>|=|<|>|\(|\)|,)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
)""", re.X)
_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
_KEYWORDS = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "ORDER", "BY", "ASC", "DESC",
             "NULLS", "FIRST", "LAST", "LIMIT", "TRUE", "FALSE", "NULL", "COUNT"}


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str

    def keyword(self) -> str | None:
        return self.text.upper() if self.kind == "word" and self.text.upper() in _KEYWORDS else None


def _tokenize(text: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{text[pos:].split()[0]}'")
        kind = match.lastgroup or ""
        tokens.append(_Token(kind, match.group(kind)))
        pos = match.end()
    return tokens


def parse(text: str) -> Query:
    """Parse a SOQL statement; raises SoqlError(MALFORMED_QUERY) on anything outside the subset."""
    if len(text) > MAX_QUERY_LENGTH:
        raise SoqlError("MALFORMED_QUERY", f"SOQL statements cannot be longer than {MAX_QUERY_LENGTH} characters.")
    return _Parser(_tokenize(text)).query()


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise SoqlError("MALFORMED_QUERY", "unexpected end of query")
        self.pos += 1
        return token

    def at(self, *words: str) -> bool:
        token = self.peek()
        return token is not None and (token.keyword() in words or (token.kind == "op" and token.text in words))

    def expect(self, word: str) -> None:
        token = self.take()
        if token.keyword() != word and token.text != word:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token.text}'")

    def field(self) -> str:
        token = self.take()
        if token.kind != "word" or token.keyword():
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token.text}'")
        return token.text

    def query(self) -> Query:
        self.expect("SELECT")
        fields: list[str] = []
        count = self.at("COUNT")
        if count:
            self.take()
            self.expect("(")
            self.expect(")")
        else:
            fields.append(self.field())
            while self.at(","):
                self.take()
                fields.append(self.field())
            lowered = [f.lower() for f in fields]
            for name in fields:
                if lowered.count(name.lower()) > 1:
                    raise SoqlError("MALFORMED_QUERY", f"duplicate field selected: {name}")
        self.expect("FROM")
        sobject = self.field()
        where = None
        if self.at("WHERE"):
            self.take()
            where = self.condition()
        order_by = self.order_by() if self.at("ORDER") else []
        limit = None
        if self.at("LIMIT"):
            self.take()
            token = self.take()
            if token.kind != "num" or not token.text.isdigit():
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token.text}'")
            limit = int(token.text)
        if self.peek() is not None:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{self.take().text}'")
        return Query(sobject, fields, count, where, order_by, limit)

    def condition(self) -> Expr:
        # SOQL refuses to mix AND and OR on one level without parentheses, so this grammar does too.
        parts = [self.unary()]
        junction = None
        while self.at("AND", "OR"):
            word = self.take().text.upper()
            if junction not in (None, word):
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{word}'")
            junction = word
            parts.append(self.unary())
        return Junction(junction, tuple(parts)) if junction else parts[0]

    def unary(self) -> Expr:
        if self.at("NOT"):
            self.take()
            return Negation(self.unary())
        if self.at("("):
            self.take()
            inner = self.condition()
            self.expect(")")
            return inner
        return self.comparison()

    def comparison(self) -> Comparison:
        name = self.field()
        token = self.take()
        if token.keyword() == "NOT":
            self.expect("IN")
            return Comparison(name, "NOT IN", self.value_list())
        if token.keyword() == "IN":
            return Comparison(name, "IN", self.value_list())
        if token.keyword() == "LIKE":
            pattern = self.take()
            if pattern.kind != "str":
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{pattern.text}'")
            return Comparison(name, "LIKE", re.compile(_like_regex(pattern.text[1:-1]), re.I | re.S))
        if token.kind == "op" and token.text in ("=", "!=", "<>", "<", ">", "<=", ">="):
            return Comparison(name, "!=" if token.text == "<>" else token.text, self.literal())
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token.text}'")

    def value_list(self) -> tuple[Any, ...]:
        self.expect("(")
        values = [self.literal()]
        while self.at(","):
            self.take()
            values.append(self.literal())
        self.expect(")")
        return tuple(values)

    def literal(self) -> Any:
        token = self.take()
        if token.kind == "str":
            return _unescape(token.text[1:-1])
        if token.kind == "num":
            return Decimal(token.text)
        if token.kind in ("date", "datetime"):
            return dt.date.fromisoformat(token.text) if token.kind == "date" else parse_datetime(token.text)
        keyword = token.keyword()
        if keyword in ("TRUE", "FALSE"):
            return keyword == "TRUE"
        if keyword == "NULL":
            return None
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token.text}'")

    def order_by(self) -> list[OrderKey]:
        self.expect("ORDER")
        self.expect("BY")
        keys = []
        while True:
            name = self.field()
            descending = self.at("DESC")
            if self.at("ASC", "DESC"):
                self.take()
            nulls_last = descending
            if self.at("NULLS"):
                self.take()
                nulls_last = self.take().keyword() == "LAST"
            keys.append(OrderKey(name, descending, nulls_last))
            if not self.at(","):
                return keys
            self.take()


def _unescape(raw: str) -> str:
    out, chars = [], iter(raw)
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if escaped and escaped in "%_":  # only meaningful in LIKE; a plain literal keeps the character
                out.append(escaped)
            elif escaped in _ESCAPES:
                out.append(_ESCAPES[escaped])
            else:
                raise SoqlError("MALFORMED_QUERY", f"Invalid string literal '{raw}'. Illegal character sequence "
                                                   f"'\\{escaped}' in string literal.")
        else:
            out.append(char)
    return "".join(out)


def _like_regex(raw: str) -> str:
    out, chars = [], iter(raw)
    for char in chars:
        if char == "\\":
            out.append(re.escape(_unescape("\\" + next(chars, ""))))
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    return "^" + "".join(out) + "$"


def _evaluate(node: Expr, get: Callable[[str], Any]) -> bool:
    if isinstance(node, Negation):
        return not _evaluate(node.part, get)
    if isinstance(node, Junction):
        results = (_evaluate(part, get) for part in node.parts)
        return all(results) if node.op == "AND" else any(results)
    actual = get(node.field)
    if node.op == "LIKE":
        return isinstance(actual, str) and node.value.match(actual) is not None
    if node.op in ("IN", "NOT IN"):
        found = actual is not None and any(_equal(actual, v) for v in node.value)
        return found if node.op == "IN" else not found
    if node.op == "=":
        return _equal(actual, node.value)
    if node.op == "!=":
        return not _equal(actual, node.value)
    if actual is None or node.value is None:
        return False
    left, right = _comparable(actual, node.value)
    if left is None:
        return False
    return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[node.op]


def _equal(actual: Any, literal: Any) -> bool:
    if actual is None or literal is None:
        return actual is None and literal is None
    left, right = _comparable(actual, literal)
    return left is not None and left == right


def _comparable(actual: Any, literal: Any) -> tuple[Any, Any]:
    """Both sides in one comparable form (strings compare case-insensitively), or (None, None)."""
    if isinstance(literal, bool) or isinstance(actual, bool):
        return (actual, literal) if isinstance(actual, bool) and isinstance(literal, bool) else (None, None)
    if isinstance(literal, Decimal):
        return (Decimal(str(actual)), literal) if isinstance(actual, (int, float, Decimal)) else (None, None)
    if isinstance(literal, dt.datetime):
        return (parse_datetime(actual), literal) if isinstance(actual, str) else (None, None)
    if isinstance(literal, dt.date):  # no date-typed fields in the model; the emulator rejects these first
        return None, None
    if isinstance(actual, str):
        return actual.casefold(), literal.casefold()
    return None, None


def _sortable(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value
