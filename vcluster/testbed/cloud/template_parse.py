"""OpenNebula template text and XML, read and written the way oned does.

Why this exists: every template that reaches the testbed (vm.allocate, template.allocate,
template.instantiate's extra template, vm.update) is either OpenNebula's template syntax
(``KEY = "value"``, ``KEY = value``, ``KEY = [ A = "x", B = "y" ]``, ``#`` comments, ``\\"``
escapes) or XML (when it starts with ``<``). oned parses it with a flex/bison grammar whose
error messages ("Parse error: syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY at
line 2, columns 9:15") reach the client; this module reproduces the grammar, its token names
and its cumulative 1-based columns, so clients see the same text.

A :class:`Template` keeps attributes in insertion order (several with one name allowed, e.g.
NIC); oned stores them in a multimap, so XML output is sorted by name (stable).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field

Value = str | dict[str, str]


class TemplateParseError(ValueError):
    """The template text could not be parsed; ``str()`` is oned's message."""


@dataclass
class Template:
    """An ordered multimap of attribute name -> single value (str) or vector (dict)."""

    attrs: list[tuple[str, Value]] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[str, Value]]:
        return iter(self.attrs)

    def __len__(self) -> int:
        return len(self.attrs)

    def copy(self) -> Template:
        return Template([(n, dict(v) if isinstance(v, dict) else v) for n, v in self.attrs])

    def get(self, name: str) -> Value | None:
        name = name.upper()
        for n, v in self.attrs:
            if n == name:
                return v
        return None

    def get_str(self, name: str, default: str = "") -> str:
        value = self.get(name)
        return value if isinstance(value, str) else default

    def get_all(self, name: str) -> list[Value]:
        name = name.upper()
        return [v for n, v in self.attrs if n == name]

    def vectors(self, name: str) -> list[dict[str, str]]:
        return [v for v in self.get_all(name) if isinstance(v, dict)]

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def add(self, name: str, value: Value) -> None:
        self.attrs.append((name.upper(), value))

    def remove(self, name: str) -> list[Value]:
        name = name.upper()
        removed = [v for n, v in self.attrs if n == name]
        self.attrs = [(n, v) for n, v in self.attrs if n != name]
        return removed

    def replace(self, name: str, value: Value) -> None:
        """Set ``name`` to ``value``, dropping every attribute of that name first."""
        self.remove(name)
        self.add(name, value)

    def merge(self, other: Template) -> None:
        """oned's Template::merge: each name in ``other`` replaces all of ours of that name."""
        for name in dict.fromkeys(n for n, _ in other.attrs):
            self.remove(name)
        for name, value in other.attrs:
            self.add(name, dict(value) if isinstance(value, dict) else value)

    def sorted_attrs(self) -> list[tuple[str, Value]]:
        return sorted(self.attrs, key=lambda item: item[0])

    def to_dict(self) -> list[list[object]]:
        return [[n, v] for n, v in self.attrs]

    @classmethod
    def from_dict(cls, data: list[list[object]]) -> Template:
        out = cls()
        for name, value in data:
            out.add(str(name), dict(value) if isinstance(value, dict) else str(value))
        return out


def cdata(text: str) -> str:
    """``text`` as one or more CDATA sections (``]]>`` split as XML requires)."""
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def template_xml(tmpl: Template, root: str) -> str:
    """oned's Template::to_xml: names sorted, vector members sorted, values as CDATA."""
    parts = [f"<{root}>"]
    for name, value in tmpl.sorted_attrs():
        parts.append(_attr_xml(name, value))
    parts.append(f"</{root}>")
    return "".join(parts)


def _attr_xml(name: str, value: Value) -> str:
    if isinstance(value, dict):
        inner = "".join(f"<{k}>{cdata(v)}</{k}>" for k, v in sorted(value.items()))
        return f"<{name}>{inner}</{name}>"
    return f"<{name}>{cdata(value)}</{name}>"


def render_text(tmpl: Template) -> str:
    """Template syntax text (used for storage of templates and in messages)."""
    lines = []
    for name, value in tmpl.attrs:
        if isinstance(value, dict):
            inner = ",\n  ".join(f'{k}="{_esc(v)}"' for k, v in value.items())
            lines.append(f"{name}=[\n  {inner} ]")
        else:
            lines.append(f'{name}="{_esc(value)}"')
    return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace('"', '\\"')


def parse_str_or_xml(text: str) -> Template:
    """oned's Template::parse_str_or_xml; raises TemplateParseError with oned's message."""
    if text.startswith("<"):
        return parse_xml(text)
    return parse_text(text)


def parse_xml(text: str) -> Template:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise TemplateParseError("Parse error: XML Template malformed.") from exc
    tmpl = Template()
    for child in root:
        if len(child):
            tmpl.add(child.tag, {sub.tag.upper(): sub.text or "" for sub in child})
        else:
            tmpl.add(child.tag, child.text or "")
    return tmpl


# --- the template_parser.l lexer -------------------------------------------------------

_BLANK = " \t"
_STRING_RE = re.compile(r"[^=#\s,\[\]]+")  # STRING [^=#[:blank:]\n,\[\]]+ (no \r special)
_VARIABLE_RE = re.compile(r"[A-Za-z0-9_]+")
_COMMENT_RE = re.compile(r"[ \t]*#[^\n]*(\n|$)")
_SPACE_RE = re.compile(r"[ \t\n]+")
_EQUAL_EMPTY_RE = re.compile(r"[ \t]*=[ \t]*\n")
_EQUAL_RE = re.compile(r"[ \t]*=[ \t]*")
_COMMA_RE = re.compile(r"[ \t\n]*,[ \t\n]*")
_CBRACKET_RE = re.compile(r"[ \t\n]*\][ \t\n]*")
_OBRACKET_RE = re.compile(r"[ \t]*\[[ \t\n]*")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\"|\\(?!"))*)"', re.DOTALL)
_CDATA_LINE_RE = re.compile(r"[^\n]*\]\]>[^\n]*")


@dataclass
class _Token:
    kind: str
    text: str
    line: int
    first_col: int
    last_col: int


def _tokens(text: str) -> Iterator[_Token]:
    """Yield tokens with bison locations: columns are cumulative and start at 1."""
    pos, line, col = 0, 1, 1
    last_first = 1
    value_state = False
    n = len(text)

    def advance(length: int) -> tuple[int, int, int]:
        nonlocal pos, line, col, last_first
        chunk = text[pos:pos + length]
        line += chunk.count("\n")
        last_first = col
        col += length
        pos += length
        return line, last_first, col

    while pos < n:
        if value_state:
            for kind, rx in (("OBRACKET", _OBRACKET_RE), ("CCDATA", _CDATA_LINE_RE)):
                m = rx.match(text, pos)
                if m and m.end() > pos:
                    ln, first, last = advance(m.end() - pos)
                    value_state = False
                    yield _Token(kind, m.group(0), ln, first, last)
                    break
            else:
                m = _QUOTED_RE.match(text, pos)
                if m:
                    ln, first, last = advance(m.end() - pos)
                    value_state = False
                    yield _Token("STRING", m.group(1).replace('\\"', '"'), ln, first, last)
                    continue
                m = _STRING_RE.match(text, pos)
                if m:
                    ln, first, last = advance(m.end() - pos)
                    value_state = False
                    yield _Token("STRING", m.group(0), ln, first, last)
                    continue
                advance(1)  # flex's default rule: an unmatched character is dropped
            continue
        m = _COMMENT_RE.match(text, pos)
        if m and "#" in m.group(0):
            advance(m.end() - pos)
            continue
        m = _EQUAL_EMPTY_RE.match(text, pos)
        if m:
            ln, first, last = advance(m.end() - pos)
            yield _Token("EQUAL_EMPTY", m.group(0), ln, first, last)
            continue
        m = _EQUAL_RE.match(text, pos)
        if m:
            ln, first, last = advance(m.end() - pos)
            value_state = True
            yield _Token("EQUAL", m.group(0), ln, first, last)
            continue
        for kind, rx in (("COMMA", _COMMA_RE), ("CBRACKET", _CBRACKET_RE)):
            m = rx.match(text, pos)
            if m:
                ln, first, last = advance(m.end() - pos)
                yield _Token(kind, m.group(0), ln, first, last)
                break
        else:
            m = _SPACE_RE.match(text, pos)
            if m:
                advance(m.end() - pos)
                continue
            m = _VARIABLE_RE.match(text, pos)
            if m:
                ln, first, last = advance(m.end() - pos)
                yield _Token("VARIABLE", m.group(0), ln, first, last)
                continue
            advance(1)
    # $end keeps the location of the last thing the lexer matched
    yield _Token("$end", "", line, last_first, col)


# --- the template_syntax.y grammar -----------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = list(_tokens(text))
        self.i = 0
        self.tmpl = Template()

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self, *kinds: str) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind not in kinds:
            self.fail(tok, kinds)
        self.i += 1
        return tok

    @staticmethod
    def fail(tok: _Token, expected: tuple[str, ...]) -> None:
        msg = f"syntax error, unexpected {tok.kind}"
        if expected:
            msg += ", expecting " + " or ".join(expected)
        raise TemplateParseError(
            f"Parse error: {msg} at line {tok.line}, columns {tok.first_col}:{tok.last_col}")

    def parse(self) -> Template:
        while True:
            tok = self.peek()
            if tok.kind == "$end":
                return self.tmpl
            if tok.kind != "VARIABLE":
                # the default reduction to template_file leaves only $end acceptable
                self.fail(tok, ("$end",))
            self.attribute()

    def attribute(self) -> None:
        name = self.take("VARIABLE").text.upper()
        op = self.take("EQUAL", "EQUAL_EMPTY")
        if op.kind == "EQUAL_EMPTY":
            self.tmpl.add(name, "")
            return
        val = self.take("OBRACKET", "CCDATA", "STRING")
        if val.kind == "CCDATA":
            raise TemplateParseError("Parse error: unknown error")
        if val.kind == "STRING":
            self.tmpl.add(name, val.text)
            return
        vector: dict[str, str] = {}
        if self.take("CBRACKET", "VARIABLE").kind == "CBRACKET":
            self.tmpl.add(name, vector)
            return
        self.i -= 1
        while True:
            key = self.take("VARIABLE").text.upper()
            self.take("EQUAL")
            vector.setdefault(key, self.take("STRING").text)
            if self.take("COMMA", "CBRACKET").kind == "CBRACKET":
                break
        self.tmpl.add(name, vector)


def parse_text(text: str) -> Template:
    """Parse OpenNebula template syntax; raise TemplateParseError with oned's message."""
    return _Parser(text).parse()
