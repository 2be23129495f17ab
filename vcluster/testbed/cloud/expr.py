"""SCHED_REQUIREMENTS and SCHED_RANK expressions, evaluated over a host's attributes.

Why this exists: OpenNebula's scheduler filters hosts with a boolean expression
(``FREE_CPU > 100 & NAME = "host*"``: ``=``, ``!=``, ``>``, ``<``, ``&``, ``|``, ``!``,
parentheses, numbers, strings, shell globbing for string equality) and orders the survivors
by an arithmetic rank (``FREE_MEM - RUNNING_VMS * 10``). This is a small recursive-descent
version of oned's expr_bool.y / expr_arith.y grammars. A missing attribute makes a
comparison false and counts as 0 in a rank.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass

Lookup = Callable[[str], str | None]


class ExprError(ValueError):
    """The expression cannot be parsed."""


_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>\"[^\"]*\")|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>!=|@>|[=<>&|!()+\-*/]))")


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, str, name, op, end
    text: str


def _lex(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"syntax error at character {pos + 1} of {text!r}")
        pos = m.end()
        kind = m.lastgroup or "op"
        value = m.group(kind)
        out.append(_Tok(kind, value[1:-1] if kind == "str" else value))
    out.append(_Tok("end", ""))
    return out


class _Parser:
    def __init__(self, text: str, lookup: Lookup) -> None:
        self.toks = _lex(text)
        self.i = 0
        self.lookup = lookup

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.next()
        if tok.text != text or tok.kind == "str":
            raise ExprError(f"syntax error, expected {text!r} but found {tok.text!r}")

    def done(self) -> None:
        if self.peek().kind != "end":
            raise ExprError(f"syntax error, unexpected {self.peek().text!r}")

    # boolean grammar: or -> and -> not -> atom
    def bool_or(self) -> bool:
        value = self.bool_and()
        while self.peek().kind == "op" and self.peek().text == "|":
            self.next()
            rhs = self.bool_and()
            value = value or rhs
        return value

    def bool_and(self) -> bool:
        value = self.bool_not()
        while self.peek().kind == "op" and self.peek().text == "&":
            self.next()
            rhs = self.bool_not()
            value = value and rhs
        return value

    def bool_not(self) -> bool:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "!":
            self.next()
            return not self.bool_not()
        if tok.kind == "op" and tok.text == "(":
            self.next()
            value = self.bool_or()
            self.expect(")")
            return value
        return self.comparison()

    def comparison(self) -> bool:
        name = self.next()
        if name.kind != "name":
            raise ExprError(f"syntax error, unexpected {name.text or 'end of expression'!r}")
        op = self.next()
        if op.kind != "op" or op.text not in ("=", "!=", ">", "<", "@>"):
            raise ExprError(f"syntax error, unexpected {op.text or 'end of expression'!r}")
        rhs = self.next()
        if rhs.kind == "op" and rhs.text == "-" and self.peek().kind == "num":
            rhs = _Tok("num", "-" + self.next().text)
        if rhs.kind not in ("num", "str", "name"):
            raise ExprError(f"syntax error, unexpected {rhs.text or 'end of expression'!r}")
        actual = self.lookup(name.text.upper())
        if actual is None:
            return False
        if rhs.kind == "num":
            try:
                left, right = float(actual), float(rhs.text)
            except ValueError:
                return False
            return {"=": left == right, "!=": left != right, ">": left > right,
                    "<": left < right, "@>": False}[op.text]
        pattern = rhs.text
        if op.text == "=":
            return fnmatch.fnmatchcase(actual, pattern)
        if op.text == "!=":
            return not fnmatch.fnmatchcase(actual, pattern)
        if op.text == "@>":
            return pattern in actual.split(",")
        return actual > pattern if op.text == ">" else actual < pattern

    # arithmetic grammar: sum -> product -> unary -> atom
    def arith_sum(self) -> float:
        value = self.arith_product()
        while self.peek().kind == "op" and self.peek().text in "+-":
            op = self.next().text
            rhs = self.arith_product()
            value = value + rhs if op == "+" else value - rhs
        return value

    def arith_product(self) -> float:
        value = self.arith_unary()
        while self.peek().kind == "op" and self.peek().text in "*/":
            op = self.next().text
            rhs = self.arith_unary()
            if op == "*":
                value *= rhs
            else:
                value = value / rhs if rhs else 0.0
        return value

    def arith_unary(self) -> float:
        tok = self.next()
        if tok.kind == "op" and tok.text == "-":
            return -self.arith_unary()
        if tok.kind == "op" and tok.text == "(":
            value = self.arith_sum()
            self.expect(")")
            return value
        if tok.kind == "num":
            return float(tok.text)
        if tok.kind == "name":
            raw = self.lookup(tok.text.upper())
            try:
                return float(raw) if raw is not None else 0.0
            except ValueError:
                return 0.0
        raise ExprError(f"syntax error, unexpected {tok.text or 'end of expression'!r}")


def check_requirements(text: str) -> None:
    """Raise ExprError if ``text`` is not a valid requirements expression."""
    matches(text, lambda _name: None)


def matches(text: str, lookup: Lookup) -> bool:
    """Evaluate a requirements expression; an empty one matches every host."""
    if not text.strip():
        return True
    parser = _Parser(text, lookup)
    value = parser.bool_or()
    parser.done()
    return value


def rank(text: str, lookup: Lookup) -> float:
    """Evaluate a rank expression (higher is better); an empty one ranks 0."""
    if not text.strip():
        return 0.0
    parser = _Parser(text, lookup)
    value = parser.arith_sum()
    parser.done()
    return value
