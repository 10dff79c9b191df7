"""A parser and evaluator for the subset of SOQL that the Salesforce emulator understands.

Besides plain selects: `COUNT()`, the aggregates `COUNT(field)`, `SUM(field)`, `MIN(field)` and `MAX(field)`,
`GROUP BY` on fields and on `DAY_ONLY(datetime)`, and aliases, with the result shape and naming rules of the real
API (`expr0`, `expr1`…).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Iterator, Union

MAX_QUERY_LENGTH = 100_000  # characters; Salesforce answers MALFORMED_QUERY above it
AGGREGATES = frozenset({"COUNT", "SUM", "MIN", "MAX"})
DATE_FUNCTIONS = frozenset({"DAY_ONLY"})
# Words SOQL refuses as aliases (SOQL reference, "Alias Notation").
_RESERVED = frozenset({"AND", "ASC", "DESC", "EXCLUDES", "FIRST", "FROM", "GROUP", "HAVING", "IN", "INCLUDES",
                       "LAST", "LIKE", "LIMIT", "NOT", "NULL", "NULLS", "OR", "SELECT", "USING", "WHERE", "WITH"})


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


@dataclass(frozen=True)
class Selected:
    """One item of the SELECT list: a field, an aggregate of one (`SUM(Total__c)`), or `DAY_ONLY(field)`."""

    field: str | None  # None only for COUNT()
    function: str | None = None
    alias: str | None = None

    @property
    def aggregate(self) -> bool:
        return self.function in AGGREGATES

    def groups_as(self, key: "GroupKey") -> bool:
        return (self.function == key.function and self.field is not None
                and self.field.lower() == key.field.lower())


@dataclass(frozen=True)
class GroupKey:
    field: str
    function: str | None = None  # None or DAY_ONLY


@dataclass
class Query:
    sobject: str
    selected: list[Selected]
    count: bool  # SELECT COUNT(): only totalSize, no records
    where: Expr | None
    order_by: list[OrderKey]
    limit: int | None
    group_by: list[GroupKey] = field(default_factory=list)

    @property
    def fields(self) -> list[str]:
        """The plain fields selected (for a plain query, the columns of each record)."""
        return [s.field for s in self.selected if s.function is None and s.field is not None]

    @property
    def aggregated(self) -> bool:
        """Whether the result is AggregateResult rows: an aggregate function or GROUP BY is present."""
        return bool(self.group_by) or (not self.count and any(s.aggregate for s in self.selected))

    def paths(self) -> list[str]:
        """Every field path the query names outside WHERE."""
        names = [s.field for s in self.selected if s.field is not None] + [k.field for k in self.group_by]
        return list(dict.fromkeys(names + [k.field for k in self.order_by]))

    def result_keys(self) -> list[str]:
        """The key of each selected item in an AggregateResult: its alias, a grouped field's name, or
        `expr<i>` numbered over the unaliased functions in order (SOQL reference, "Using Aliases with GROUP BY")."""
        keys, implied = [], 0
        for item in self.selected:
            if item.alias:
                keys.append(item.alias)
            elif item.function is None:
                keys.append((item.field or "").split(".")[-1])
            else:
                keys.append(f"expr{implied}")
                implied += 1
        return keys

    def aggregate(self, rows: list[Any], get: Callable[[Any, str], Any],
                  rank: Callable[[str, Any], Any] | None = None) -> list[dict[str, Any]]:
        """AggregateResult rows (without attributes): one per group, or one in all without GROUP BY.
        `rank(path, value)` orders a field's values for MIN and MAX (by default: numbers, text without case)."""
        order_of = rank or (lambda path, value: _sortable(value))
        groups: dict[tuple, list[Any]] = {}
        for row in rows:
            groups.setdefault(tuple(_group_value(k.function, get(row, k.field)) for k in self.group_by), []).append(row)
        if not self.group_by:
            groups = {(): rows}
        plain = [k.field.lower() if k.function is None else None for k in self.group_by]
        ordered = self.order(list(groups.items()), lambda group, path: group[0][plain.index(path.lower())])
        keys = self.result_keys()
        results = []
        for group_values, members in ordered:
            result = {}
            for key, item in zip(keys, self.selected):
                if item.aggregate:
                    values = [get(r, item.field) for r in members] if item.field else members
                    result[key] = _aggregate(item, values, lambda value, path=item.field: order_of(path, value))
                else:
                    position = next(i for i, k in enumerate(self.group_by) if item.groups_as(k))
                    result[key] = group_values[position]
            results.append(result)
        return results

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

    def conditions(self) -> int:
        """How many conditions the WHERE clause holds: one per comparison, one per value of an IN list."""
        return sum(len(c.value) if c.op in ("IN", "NOT IN") else 1 for c in self.comparisons())

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
             "NULLS", "FIRST", "LAST", "LIMIT", "TRUE", "FALSE", "NULL", "COUNT", "GROUP"}


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
        selected = [self.selected()]
        while self.at(","):
            self.take()
            selected.append(self.selected())
        self.expect("FROM")
        sobject = self.field()
        where = None
        if self.at("WHERE"):
            self.take()
            where = self.condition()
        group_by = self.group_by() if self.at("GROUP") else []
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
        count = any(s.function == "COUNT" and s.field is None for s in selected)
        if count and (len(selected) > 1 or group_by):
            raise SoqlError("MALFORMED_QUERY", "COUNT() must be the only item selected and cannot be grouped; "
                                               "use COUNT(fieldName) with GROUP BY")
        query = Query(sobject, selected, count, where, order_by, limit, group_by)
        _check_shape(query)
        return query

    def selected(self) -> Selected:
        token = self.take()
        if token.kind == "word" and self.at("("):
            function = token.text.upper()
            if function not in AGGREGATES | DATE_FUNCTIONS:
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token.text}'")
            self.take()
            name = None if function == "COUNT" and self.at(")") else self.field()
            self.expect(")")
            item = Selected(name, function)
        elif token.kind == "word" and not token.keyword():
            item = Selected(token.text)
        else:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token.text}'")
        alias = self.peek()
        if alias is not None and alias.kind == "word" and not alias.keyword() and alias.text.upper() not in _RESERVED:
            self.take()
            if "." in alias.text or (item.function == "COUNT" and item.field is None):
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{alias.text}'")
            item = Selected(item.field, item.function, alias.text)
        return item

    def group_by(self) -> list[GroupKey]:
        self.expect("GROUP")
        self.expect("BY")
        keys = []
        while True:
            token = self.take()
            if token.kind == "word" and self.at("("):
                if token.text.upper() not in DATE_FUNCTIONS:
                    raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token.text}'")
                self.take()
                keys.append(GroupKey(self.field(), token.text.upper()))
                self.expect(")")
            elif token.kind == "word" and not token.keyword():
                keys.append(GroupKey(token.text))
            else:
                raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{token.text}'")
            if not self.at(","):
                return keys
            self.take()

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


def _check_shape(query: Query) -> None:
    """The rules SOQL applies to a select list before it looks at any field."""
    if not query.aggregated:
        for item in query.selected:
            if item.alias:
                raise SoqlError("MALFORMED_QUERY", "Only aggregate expressions use field aliasing")
            if item.function in DATE_FUNCTIONS:
                raise SoqlError("MALFORMED_QUERY", f"{item.function}({item.field}) must be grouped: add it to GROUP BY")
        lowered = [f.lower() for f in query.fields]
        for name in query.fields:
            if lowered.count(name.lower()) > 1:
                raise SoqlError("MALFORMED_QUERY", f"duplicate field selected: {name}")
        return
    for item in query.selected:
        if not item.aggregate and not any(item.groups_as(key) for key in query.group_by):
            shown = f"{item.function}({item.field})" if item.function else item.field
            raise SoqlError("MALFORMED_QUERY", f"Field must be grouped or aggregated: {shown}")
    keys = [k.lower() for k in query.result_keys()]
    for key in keys:
        if keys.count(key) > 1:
            raise SoqlError("MALFORMED_QUERY", f"duplicate alias: {key}")
    if query.limit is not None and not query.group_by:
        raise SoqlError("MALFORMED_QUERY", "an aggregate query with LIMIT needs a GROUP BY clause")
    for key in query.order_by:
        if not any(k.function is None and k.field.lower() == key.field.lower() for k in query.group_by):
            raise SoqlError("MALFORMED_QUERY", f"Ordered field must be grouped or aggregated: {key.field}")


def _group_value(function: str | None, value: Any) -> Any:
    if function == "DAY_ONLY" and value is not None:
        return parse_datetime(value).date().isoformat()  # the UTC day: no convertTimezone() here
    return value


def _aggregate(item: Selected, values: list[Any], rank: Callable[[Any], Any]) -> Any:
    """COUNT(field) counts the non-null values (COUNT(Id) every row). SUM, MIN and MAX ignore nulls and are
    null when no value is left; SUM is a number, MIN and MAX a value as the field holds it (so a date-time
    keeps its string form)."""
    if item.function == "COUNT":
        return sum(1 for v in values if v is not None)
    present = [v for v in values if v is not None]
    if not present:
        return None
    if item.function == "SUM":
        return float(sum((Decimal(str(v)) for v in present), Decimal(0)))
    return (min if item.function == "MIN" else max)(present, key=rank)


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
