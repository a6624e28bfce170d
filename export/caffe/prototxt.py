"""Protobuf text format, as Caffe's prototxt files use it, parsed into a tree that keeps every field's position.

The tree is schema-free on purpose: one parser reads the V2 `layer`, V1 `layers` and V0 layouts, including the
SPP-net release's hybrid that BVLC's own parser rejects; `netdef.py` then reads it by name, so an unknown layer
type is refused by its name and type rather than as a syntax error. Syntax errors carry the line and column.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from sppnet.core.errors import BadData

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+|\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)(?![A-Za-z_0-9]))
  | (?P<ident>-?[A-Za-z_][A-Za-z_0-9]*)
  | (?P<punct>[{}\[\]<>:,;])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "'": "'", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}
_OCTAL = re.compile(r"\\([0-7]{1,3})")


class PrototxtError(BadData):
    """A prototxt that is not valid protobuf text; the message gives the file, line and column."""


@dataclass(frozen=True)
class Token:
    kind: str  # string, number, ident, punct, end
    text: str
    line: int
    column: int


@dataclass
class Scalar:
    """A scalar value as written: a string (unquoted here), a number's text, or an identifier (enum, bool)."""

    kind: str  # string, number, ident
    text: str


@dataclass
class Field:
    """One `name: value` or `name { ... }` of a message, where it starts in the file."""

    name: str
    value: Scalar | Message
    line: int
    column: int

    @property
    def where(self) -> str:
        return f"line {self.line}, column {self.column}"


@dataclass
class Message:
    """The fields of one message in file order (a repeated field appears once per value)."""

    fields: list[Field] = field(default_factory=list)
    line: int = 1
    column: int = 1

    def all(self, name: str) -> list[Field]:
        return [f for f in self.fields if f.name == name]

    def last(self, name: str) -> Field | None:
        """The field's value as protobuf reads an optional field written twice: the last one wins."""
        found = self.all(name)
        return found[-1] if found else None

    def names(self) -> list[str]:
        return list(dict.fromkeys(f.name for f in self.fields))


def _tokens(text: str, source: str) -> Iterator[Token]:
    line, start, pos = 1, 0, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise PrototxtError(
                f"{source}:{line}:{pos - start + 1}: unexpected character {text[pos]!r}: this is not protobuf text "
                "(fix the prototxt there)"
            )
        kind = match.lastgroup
        if kind == "space" and match.group() == "\n":
            line, start = line + 1, match.end()
        elif kind not in ("space", "comment"):
            yield Token(kind or "", match.group(), line, pos - start + 1)  # type: ignore[arg-type]
        pos = match.end()
    yield Token("end", "", line, pos - start + 1)


def _unquote(token: Token, source: str) -> str:
    body = token.text[1:-1]
    body = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), body)
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            escaped = body[i + 1]
            if escaped not in _ESCAPES:
                raise PrototxtError(
                    f"{source}:{token.line}:{token.column}: unknown escape \\{escaped} in a string: fix the prototxt"
                )
            out.append(_ESCAPES[escaped])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = list(_tokens(text, source))
        self.i = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.i]

    def fail(self, expected: str, token: Token | None = None) -> PrototxtError:
        token = token or self.token
        found = "the end of the file" if token.kind == "end" else repr(token.text)
        return PrototxtError(
            f"{self.source}:{token.line}:{token.column}: expected {expected}, found {found}: fix the prototxt there"
        )

    def take(self, text: str) -> bool:
        if self.token.kind == "punct" and self.token.text == text:
            self.i += 1
            return True
        return False

    def message(self, close: str | None, opened: Token | None = None) -> Message:
        start = opened or self.token
        message = Message(line=start.line, column=start.column)
        while True:
            token = self.token
            if close is not None and self.take(close):
                return message
            if token.kind == "end":
                if close is None:
                    return message
                raise PrototxtError(
                    f"{self.source}:{token.line}:{token.column}: the file ends inside the message opened at line "
                    f"{start.line}, column {start.column}: close it with {close!r}"
                )
            if token.kind != "ident" or token.text.startswith("-"):
                raise self.fail("a field name")
            self.i += 1
            message.fields.extend(self.field(token))
            self.take(",") or self.take(";")

    def field(self, name: Token) -> list[Field]:
        colon = self.take(":")
        opened = self.token
        if self.take("{") or self.take("<"):
            return [Field(name.text, self.message("}" if opened.text == "{" else ">", opened), name.line, name.column)]
        if not colon:
            raise self.fail(f"':' or '{{' after {name.text!r}")
        if self.take("["):
            values: list[Field] = []
            if self.take("]"):
                return values
            while True:
                values.append(Field(name.text, self.value(), name.line, name.column))
                if self.take("]"):
                    return values
                if not self.take(","):
                    raise self.fail("',' or ']' in a list")
        return [Field(name.text, self.value(), name.line, name.column)]

    def value(self) -> Scalar | Message:
        token = self.token
        if self.take("{") or self.take("<"):
            return self.message("}" if token.text == "{" else ">", token)
        if token.kind == "string":
            parts = []
            while self.token.kind == "string":  # adjacent strings concatenate
                parts.append(_unquote(self.token, self.source))
                self.i += 1
            return Scalar("string", "".join(parts))
        if token.kind in ("number", "ident"):
            self.i += 1
            return Scalar(token.kind, token.text)
        raise self.fail("a value")


def parse_prototxt(text: str, source: str = "<prototxt>") -> Message:
    """The top-level message of a prototxt; PrototxtError with `source:line:column` on a syntax error."""
    return _Parser(text, source).message(None)
