"""A reader for the small subset of YAML the deployment files are written in, so that the tests can look
inside compose.yaml and the Prometheus and Grafana files without adding PyYAML to the project.

Read: block mappings and block sequences nested by indentation, sequence items that are scalars or
mappings, flow sequences of scalars (`[ALL]`), plain, single- and double-quoted scalars, `|` literal
blocks, comments, empty values (None). Plain scalars stay strings except `true`/`false`.

Anything else (anchors and aliases, tags, flow mappings, folded blocks, several documents, tabs) is an
error rather than a guess: a file that outgrows the subset fails its test loudly instead of being
misread. Prometheus' own files are also parsed by promtool in the tests; compose.yaml has no other
reader here (no Docker engine, no PyYAML).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_KEY = re.compile(
    r"""^(?P<key>"[^"]*"|'[^']*'|[^\s#'"\[\]{}&*!|>%@`-][^#:]*?|-[^\s#:][^#:]*?)\s*:(?:\s+(?P<rest>.*))?$"""
)


class YamlSubsetError(ValueError):
    pass


@dataclass
class _Line:
    number: int
    indent: int
    text: str  # without indentation and trailing comment


def load(text: str) -> Any:
    lines = _lines(text)
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0].indent)
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end].number}: unexpected indentation")
    return value


def _strip_comment(text: str) -> str:
    quote = ""
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"" and (i == 0 or text[i - 1] in " [,:-"):
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def _lines(text: str) -> list[_Line]:
    raw = text.splitlines()
    out: list[_Line] = []
    i = 0
    while i < len(raw):
        line = raw[i]
        number = i + 1
        i += 1
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise YamlSubsetError(f"line {number}: tab in indentation")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped in ("---", "...") or stripped.startswith("%"):
            raise YamlSubsetError(f"line {number}: documents and directives are outside the subset")
        indent = len(line) - len(line.lstrip(" "))
        body = _strip_comment(line[indent:])
        # A literal block (`key: |`) takes every following line indented deeper, verbatim.
        block_start = re.search(r"(?<=:)\s+\|[-+]?$", body)
        if block_start is not None:
            block: list[str] = []
            while i < len(raw) and (not raw[i].strip() or len(raw[i]) - len(raw[i].lstrip(" ")) > indent):
                block.append(raw[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            depth = min(len(b) - len(b.lstrip(" ")) for b in block if b.strip()) if block else 0
            literal = "\n".join(b[depth:] for b in block) + ("" if body.endswith("|-") else "\n")
            body = body[: block_start.start()] + " " + json.dumps(literal)
        # "- x" is an item marker at this indent followed by "x" two columns deeper.
        while body.startswith("- ") or body == "-":
            out.append(_Line(number, indent, "-"))
            rest = body[1:].lstrip(" ")
            indent += len(body) - len(rest)
            body = rest
            if not body:
                break
        if body:
            out.append(_Line(number, indent, body))
    return out


def _block(lines: list[_Line], start: int, indent: int) -> tuple[Any, int]:
    first = lines[start]
    if first.text == "-":
        return _sequence(lines, start, indent)
    if _KEY.match(first.text):
        return _mapping(lines, start, indent)
    if start + 1 < len(lines) and lines[start + 1].indent >= indent:
        raise YamlSubsetError(f"line {first.number}: multi-line plain scalars are outside the subset")
    return _scalar(first.text, first.number), start + 1


def _sequence(lines: list[_Line], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i].indent == indent and lines[i].text == "-":
        marker = lines[i]
        i += 1
        if i < len(lines) and lines[i].indent > indent:
            value, i = _block(lines, i, lines[i].indent)
        elif i < len(lines) and lines[i].indent == indent and lines[i].text != "-":
            raise YamlSubsetError(
                f"line {lines[i].number}: expected an item of the sequence at line {marker.number}"
            )
        else:
            value = None
        items.append(value)
    return items, i


def _mapping(lines: list[_Line], i: int, indent: int) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i].indent == indent:
        line = lines[i]
        match = _KEY.match(line.text)
        if match is None:
            raise YamlSubsetError(f"line {line.number}: expected `key: value`, got {line.text!r}")
        key = _unquote(match["key"].strip())
        if key in mapping:
            raise YamlSubsetError(f"line {line.number}: duplicate key {key!r}")
        rest = match["rest"]
        i += 1
        if rest:
            mapping[key] = _scalar(rest, line.number)
        elif i < len(lines) and lines[i].indent > indent:
            mapping[key], i = _block(lines, i, lines[i].indent)
        elif i < len(lines) and lines[i].indent == indent and lines[i].text == "-":
            mapping[key], i = _sequence(lines, i, indent)  # a sequence may sit at its key's indent
        else:
            mapping[key] = None
    if i < len(lines) and lines[i].indent > indent:
        raise YamlSubsetError(f"line {lines[i].number}: unexpected indentation")
    return mapping, i


def _scalar(text: str, number: int) -> Any:
    if text[0] in "&*!{>|%@`":
        raise YamlSubsetError(
            f"line {number}: {text[0]!r} (anchors, tags, flow mappings, folded blocks) is outside the subset"
        )
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlSubsetError(f"line {number}: a flow sequence must close on its line")
        inner = text[1:-1].strip()
        return [_scalar(part.strip(), number) for part in inner.split(",")] if inner else []
    if text[0] in "'\"":
        if len(text) < 2 or text[-1] != text[0]:
            raise YamlSubsetError(f"line {number}: unterminated quoted scalar")
        return _unquote(text)
    return {"true": True, "false": False}.get(text, text)


def _unquote(text: str) -> str:
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        value: str = json.loads(text)
        return value
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    return text
