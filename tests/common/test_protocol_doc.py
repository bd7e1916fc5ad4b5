"""docs/protocol.md must describe exactly what common/wire.py enforces.

Another-language actor is written from the document, not the code, so a kind, meta key or array added to
`SCHEMAS` without documenting it is a protocol bug. The document's per-kind sections have a fixed layout
(described in its "Message kinds" section) that this test parses.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest

from common import wire
from common.wire import ALLOWED_DTYPES, PROTOCOL_VERSION, SCHEMAS, Schema

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"

# How the document names each Python type used in a schema. A new type must get a name here (and in the doc).
TYPE_NAMES: dict[object, str] = {int: "int", str: "string", dict: "map", (int, float): "number", bool: "boolean"}

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_KIND_HEADING = re.compile(r"^### `([^`]+)`\s*$")
_SECTION_HEADING = re.compile(r"^## ")


@dataclass
class DocKind:
    """One `### \\`kind\\`` section as documented."""

    meta: dict[str, tuple[str, str]]  # key -> (type, "required" | "optional")
    arrays: dict[str, tuple[str, str]]  # name -> (dtype, shape)
    batched: str | None
    says_no_meta: bool
    says_no_arrays: bool


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in _CELL_SPLIT.split(line.strip().strip("|"))]


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """Every pipe table in `lines` as rows of cells, header row first, separator row dropped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*lines, ""]:
        if line.lstrip().startswith("|"):
            cells = _cells(line)
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _name(cell: str) -> str:
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"first column must be a name in backticks, got {cell!r}"
    return match.group(1)


def _section(text: str, title: str) -> list[str]:
    """Lines of the `## title` section, up to the next `## ` heading."""
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if _SECTION_HEADING.match(lines[i])), len(lines))
    return lines[start:end]


def parse_kinds(text: str) -> dict[str, DocKind]:
    kinds: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in _section(text, "Message kinds"):
        match = _KIND_HEADING.match(line)
        if match:
            assert match.group(1) not in kinds, f"kind {match.group(1)!r} documented twice"
            current = kinds.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    parsed: dict[str, DocKind] = {}
    for kind, body in kinds.items():
        meta: dict[str, tuple[str, str]] = {}
        arrays: dict[str, tuple[str, str]] = {}
        for table in _tables(body):
            head, rows = table[0], table[1:]
            target: dict[str, tuple[str, str]]
            if head[0] == "Key":
                target, columns = meta, (1, 2)
            elif head[0] == "Array":
                target, columns = arrays, (1, 2)
            else:
                continue
            assert not target, f"{kind}: two {head[0]} tables"
            for row in rows:
                assert len(row) == len(head), f"{kind}: row {row} does not match header {head}"
                name = _name(row[0])
                assert name not in target, f"{kind}: {name!r} listed twice"
                target[name] = (row[columns[0]].strip("`"), row[columns[1]].strip("`"))
        batched = re.search(r"\*\*Batched:\*\*\s*(yes|no)\b", "\n".join(body))
        parsed[kind] = DocKind(
            meta=meta,
            arrays=arrays,
            batched=batched.group(1) if batched else None,
            says_no_meta=any(line.strip() == "Meta: none." for line in body),
            says_no_arrays=any(line.strip() == "Arrays: none." for line in body),
        )
    return parsed


def _type_name(expected: object) -> str:
    name = TYPE_NAMES.get(expected)
    assert name is not None, f"no documented type name for {expected!r}: extend TYPE_NAMES and the doc"
    return name


def mismatches(doc: dict[str, DocKind], schemas: dict[str, Schema]) -> list[str]:
    """Every disagreement between the documented kinds and `schemas`, as readable lines (empty: in step)."""
    problems: list[str] = []
    for kind in sorted(set(schemas) - set(doc)):
        problems.append(f"kind {kind!r} is in SCHEMAS but not documented")
    for kind in sorted(set(doc) - set(schemas)):
        problems.append(f"kind {kind!r} is documented but not in SCHEMAS")
    for kind in sorted(set(doc) & set(schemas)):
        documented, schema = doc[kind], schemas[kind]
        want_meta = {k: (_type_name(t), "required") for k, t in schema.meta.items()}
        want_meta.update({k: (_type_name(t), "optional") for k, t in schema.optional_meta.items()})
        for key in sorted(set(want_meta) | set(documented.meta)):
            if want_meta.get(key) != documented.meta.get(key):
                problems.append(f"{kind}.meta {key!r}: schema {want_meta.get(key)}, doc {documented.meta.get(key)}")
        if schema.any_arrays:
            want_arrays = {"*": "any"}
            want_arrays.update({name: _dtype_cell(dtypes) for name, dtypes in schema.arrays.items()})
        else:
            want_arrays = {name: _dtype_cell(dtypes) for name, dtypes in schema.arrays.items()}
        got_arrays = {name: dtype for name, (dtype, _shape) in documented.arrays.items()}
        for name in sorted(set(want_arrays) | set(got_arrays)):
            if want_arrays.get(name) != got_arrays.get(name):
                problems.append(f"{kind}.arrays {name!r}: schema {want_arrays.get(name)}, doc {got_arrays.get(name)}")
        batched = "yes" if schema.batched else "no"
        if documented.batched != batched:
            problems.append(f"{kind}: batched is {batched} in the schema, {documented.batched} in the doc")
        if documented.says_no_meta == bool(documented.meta) or documented.says_no_meta != (not want_meta):
            problems.append(f"{kind}: needs a meta table, or 'Meta: none.' when the kind has no meta")
        if documented.says_no_arrays == bool(documented.arrays) or documented.says_no_arrays != (not want_arrays):
            problems.append(f"{kind}: needs an arrays table, or 'Arrays: none.' when the kind has no arrays")
    return problems


def _dtype_cell(dtypes: frozenset[str] | None) -> str:
    if dtypes is None:
        return "any"
    assert len(dtypes) == 1, "a choice of dtypes needs its own notation in the doc"
    return next(iter(dtypes))


@pytest.fixture(scope="module")
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def doc_kinds(doc_text: str) -> dict[str, DocKind]:
    return parse_kinds(doc_text)


def test_documented_kinds_equal_schemas(doc_kinds: dict[str, DocKind]) -> None:
    assert set(doc_kinds) == set(SCHEMAS)


def test_every_kind_matches_its_schema(doc_kinds: dict[str, DocKind]) -> None:
    problems = mismatches(doc_kinds, SCHEMAS)
    assert not problems, "docs/protocol.md disagrees with common.wire.SCHEMAS:\n" + "\n".join(problems)


def test_protocol_version_is_documented(doc_text: str) -> None:
    versions = set(re.findall(r"PROTOCOL_VERSION\s*=\s*(\d+)", doc_text))
    assert versions == {str(PROTOCOL_VERSION)}


def test_allowed_dtypes_are_documented(doc_text: str) -> None:
    (table,) = [t for t in _tables(_section(doc_text, "Framing")) if t[0][0] == "dtype"]
    documented = {_name(row[0]): int(row[1]) for row in table[1:]}
    assert documented == {name: np.dtype(name).itemsize for name in ALLOWED_DTYPES}


def test_header_keys_are_documented(doc_text: str) -> None:
    (table,) = [t for t in _tables(_section(doc_text, "Framing")) if t[0][0] == "Key"]
    header = msgpack.unpackb(wire.encode("stop", {"reason": "x"})[0])
    assert {_name(row[0]) for row in table[1:]} == set(header)


def test_every_decode_reason_is_documented(doc_text: str) -> None:
    """A new `DecodeError("reason", ...)` in wire.py needs a row in the rejection table."""
    tree = ast.parse(Path(wire.__file__).read_text(encoding="utf-8"))
    raised = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "DecodeError"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert len(raised) >= 10, "the reason-code scan found too little: did wire.py change shape?"
    tables = [t for t in _tables(_section(doc_text, "Validation and rejection")) if t[0][0] == "Reason"]
    documented = {_name(row[0]) for table in tables for row in table[1:]}
    assert raised <= documented, f"undocumented reasons: {sorted(raised - documented)}"


# ---- the check itself must catch drift -------------------------------------------------------------


def _drifted(change: str) -> dict[str, Schema]:
    schemas = dict(SCHEMAS)
    if change == "new kind":
        schemas["ping"] = Schema(meta={"nonce": int})
    elif change == "dropped kind":
        del schemas["stats_request"]
    elif change == "new required meta":
        schemas["hello"] = dataclasses.replace(SCHEMAS["hello"], meta={**SCHEMAS["hello"].meta, "token": str})
    elif change == "new optional meta":
        optional = {**SCHEMAS["stop"].optional_meta, "detail": str}
        schemas["stop"] = dataclasses.replace(SCHEMAS["stop"], optional_meta=optional)
    elif change == "required became optional":
        old = SCHEMAS["sample"]
        schemas["sample"] = dataclasses.replace(old, meta={"batch_size": int}, optional_meta={"beta": (int, float)})
    elif change == "meta type changed":
        schemas["stop"] = dataclasses.replace(SCHEMAS["stop"], meta={"reason": int})
    elif change == "new array":
        arrays = {**SCHEMAS["transitions"].arrays, "env_index": frozenset({"int64"})}
        schemas["transitions"] = dataclasses.replace(SCHEMAS["transitions"], arrays=arrays)
    elif change == "array dtype changed":
        arrays = {**SCHEMAS["priorities"].arrays, "priority": frozenset({"float64"})}
        schemas["priorities"] = dataclasses.replace(SCHEMAS["priorities"], arrays=arrays)
    elif change == "weights got fixed arrays":
        schemas["weights"] = dataclasses.replace(SCHEMAS["weights"], any_arrays=False)
    elif change == "batched flag changed":
        schemas["eval_result"] = dataclasses.replace(SCHEMAS["eval_result"], batched=False)
    else:  # pragma: no cover
        raise AssertionError(change)
    return schemas


@pytest.mark.parametrize(
    "change",
    [
        "new kind",
        "dropped kind",
        "new required meta",
        "new optional meta",
        "required became optional",
        "meta type changed",
        "new array",
        "array dtype changed",
        "weights got fixed arrays",
        "batched flag changed",
    ],
)
def test_drift_from_the_doc_is_reported(doc_kinds: dict[str, DocKind], change: str) -> None:
    assert mismatches(doc_kinds, _drifted(change))


def test_parser_reads_a_known_section(doc_kinds: dict[str, DocKind]) -> None:
    """Guards the parser itself: a parser that read nothing would make the comparisons vacuous."""
    hello = doc_kinds["hello"]
    assert hello.meta["role"] == ("string", "required")
    assert hello.meta["pid"] == ("int", "optional")
    assert doc_kinds["transitions"].arrays["action"] == ("int64", "(B,)")
    assert doc_kinds["snapshot_request"].says_no_meta and doc_kinds["get_weights"].says_no_arrays
    assert doc_kinds["get_weights"].meta["newer_than"] == ("int", "optional")


def test_ports_table_matches_the_config(doc_text: str) -> None:
    """Each socket's port setting, its default, and its place in --port-base P..P+3."""
    from common.config import NetConfig

    (table,) = [t for t in _tables(_section(doc_text, "Processes and sockets")) if t[0][0] == "Socket"]
    head = table[0]
    setting, default, offset = head.index("Port setting"), head.index("Default"), head.index("With `--port-base P`")
    based = NetConfig().with_port_base(1000)
    for row in table[1:]:
        name = _name(row[setting]).removeprefix("net.")
        assert int(row[default]) == getattr(NetConfig(), name), row
        plus = row[offset].removeprefix("P").removeprefix("+") or "0"
        assert getattr(based, name) == 1000 + int(plus), row
    assert len(table) == 5, "four sockets"
