"""Schema compatibility rules for the event contract, plus the committed snapshots.

Within one (type, version) the contract is add-only: a new *optional* field or a new enum value
is fine; anything that breaks a consumer or the replay of stored events is not. Such a change
must be a new version plus an upcaster (shared/contract/registry.py).

`breaking_changes(old, new)` is pure: two JSON Schemas (as pydantic emits them, with local
`#/$defs/...` references) in, a list of human-readable problems out.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SNAPSHOT_DIR = Path(__file__).resolve().parent / "snapshots"
REFRESH_COMMAND = "python -m tests.contract.refresh  (or UPDATE_SNAPSHOTS=1 pytest tests/contract)"

Schema = dict[str, Any]

# Constraint keywords where a larger new value is stricter, and where a smaller one is.
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_UNION_KEYS = ("anyOf", "oneOf")


# -- reading schemas -----------------------------------------------------------------------------

def resolve(schema: Schema, root: Schema) -> Schema:
    """Follow local `$ref`s ("#/..."), including `allOf: [{$ref}]` wrappers."""
    seen: set[str] = set()
    while True:
        if "$ref" in schema:
            ref = schema["$ref"]
        elif len(schema.get("allOf", [])) == 1 and "$ref" in schema["allOf"][0]:
            ref = schema["allOf"][0]["$ref"]
        else:
            return schema
        if not ref.startswith("#/") or ref in seen:
            raise ValueError(f"cannot resolve $ref {ref!r}")
        seen.add(ref)
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        schema = target


def _branches(schema: Schema, root: Schema) -> list[Schema]:
    """The alternatives of a union (anyOf/oneOf), resolved; a non-union is its own single branch."""
    schema = resolve(schema, root)
    for key in _UNION_KEYS:
        if key in schema:
            return [b for sub in schema[key] for b in _branches(sub, root)]
    return [schema]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def json_types(schema: Schema, root: Schema) -> frozenset[str]:
    """The JSON types a schema admits; strings carry their format, e.g. "string(date-time)"."""
    out: set[str] = set()
    for branch in _branches(schema, root):
        if "const" in branch:
            out.add(_json_type(branch["const"]))
        elif "enum" in branch:
            out.update(_json_type(v) for v in branch["enum"])
        elif "type" in branch:
            kinds = branch["type"] if isinstance(branch["type"], list) else [branch["type"]]
            for kind in kinds:
                if kind == "string" and "format" in branch:
                    out.add(f"string({branch['format']})")
                else:
                    out.add(kind)
        elif "properties" in branch:
            out.add("object")
        else:
            out.add("any")
    return frozenset(out)


def _allowed_values(schema: Schema, root: Schema) -> set[str] | None:
    """JSON-encoded values an enum/const/null-only schema allows; None if unrestricted."""
    values: set[str] = set()
    for branch in _branches(schema, root):
        if "const" in branch:
            values.add(json.dumps(branch["const"], sort_keys=True))
        elif "enum" in branch:
            values.update(json.dumps(v, sort_keys=True) for v in branch["enum"])
        elif branch.get("type") == "null":
            values.add("null")
        else:
            return None
    return values


def walk_properties(schema: Schema, root: Schema | None = None, path: str = "") -> Iterator[tuple[str, str, Schema]]:
    """Yield (dotted path, field name, resolved field schema) for every property, nested ones too."""
    root = schema if root is None else root
    seen: set[int] = set()

    def walk(node: Schema, prefix: str) -> Iterator[tuple[str, str, Schema]]:
        for branch in _branches(node, root):
            if id(branch) in seen:
                continue
            seen.add(id(branch))
            for name, sub in branch.get("properties", {}).items():
                sub_path = f"{prefix}.{name}" if prefix else name
                yield sub_path, name, resolve(sub, root)
                yield from walk(sub, sub_path)
            if isinstance(branch.get("items"), dict):
                yield from walk(branch["items"], f"{prefix}[]")
            if isinstance(branch.get("additionalProperties"), dict):
                yield from walk(branch["additionalProperties"], f"{prefix}{{}}")

    yield from walk(schema, path)


# -- comparing schemas ---------------------------------------------------------------------------

_NUMERIC_BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def _numeric_bound(schema: Schema, kind: str, inclusive: str, exclusive: str) -> tuple[float, bool] | None:
    """The effective (value, is_exclusive) lower or upper bound of a number, if any."""
    candidates = [(schema[k], k == exclusive) for k in (inclusive, exclusive) if _is_number(schema.get(k))]
    if not candidates:
        return None
    # the tightest: for a lower bound the largest value, exclusive winning a tie (and vice versa)
    if kind == "lower":
        return max(candidates, key=lambda c: (c[0], c[1]))
    return min(candidates, key=lambda c: (c[0], not c[1]))


def _stricter(new: tuple[float, bool], old: tuple[float, bool], kind: str) -> bool:
    if new[0] != old[0]:
        return new[0] > old[0] if kind == "lower" else new[0] < old[0]
    return new[1] and not old[1]


def _fmt_bound(bound: tuple[float, bool] | None) -> str:
    if bound is None:
        return "none"
    return f"{bound[0]} (exclusive)" if bound[1] else f"{bound[0]}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt_types(types: frozenset[str]) -> str:
    return " | ".join(sorted(types))


def _label(path: str) -> str:
    return f"field '{path}'" if path else "the payload"


class _Comparison:
    def __init__(self, old_root: Schema, new_root: Schema) -> None:
        self.old_root = old_root
        self.new_root = new_root
        self.problems: list[str] = []
        self._visited: set[tuple[int, int]] = set()

    def compare(self, old: Schema, new: Schema, path: str) -> None:
        old = resolve(old, self.old_root)
        new = resolve(new, self.new_root)
        if (id(old), id(new)) in self._visited:  # recursive models
            return
        self._visited.add((id(old), id(new)))

        old_types, new_types = json_types(old, self.old_root), json_types(new, self.new_root)
        if old_types != new_types:
            self.problems.append(
                f"{_label(path)} changed type from {_fmt_types(old_types)} to {_fmt_types(new_types)}"
            )
            return

        old_values = _allowed_values(old, self.old_root)
        new_values = _allowed_values(new, self.new_root)
        if old_values is not None and new_values is not None:
            lost = sorted(old_values - new_values)
            if lost:
                self.problems.append(f"{_label(path)}: enum lost value(s) {', '.join(lost)}")
        elif old_values is None and new_values is not None:
            self.problems.append(
                f"{_label(path)} is now restricted to the values {', '.join(sorted(new_values))}"
            )

        old_branches = _branches(old, self.old_root)
        new_branches = _branches(new, self.new_root)
        for old_b, new_b, sub_path in self._pair(old_branches, new_branches, path):
            self._compare_constraints(old_b, new_b, sub_path)
            self._compare_objects(old_b, new_b, sub_path)
            for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
                if isinstance(old_b.get(key), dict) and isinstance(new_b.get(key), dict):
                    self.compare(old_b[key], new_b[key], f"{sub_path}{suffix}")

    def _pair(self, old_bs: list[Schema], new_bs: list[Schema], path: str):
        """Match union members: by type signature, and object members by title when there are several."""
        for old_b in old_bs:
            sig = json_types(old_b, self.old_root)
            candidates = [n for n in new_bs if json_types(n, self.new_root) == sig]
            if len(candidates) > 1:
                candidates = [n for n in candidates if n.get("title") == old_b.get("title")]
            if len(candidates) == 1:
                yield old_b, candidates[0], path
            elif not candidates and "object" in sig:
                self.problems.append(f"{_label(path)}: union member {old_b.get('title', '?')!r} was removed")

    def _compare_constraints(self, old: Schema, new: Schema, path: str) -> None:
        for kind, inclusive, exclusive in (("lower", "minimum", "exclusiveMinimum"), ("upper", "maximum", "exclusiveMaximum")):
            old_b, new_b = _numeric_bound(old, kind, inclusive, exclusive), _numeric_bound(new, kind, inclusive, exclusive)
            if new_b is not None and (old_b is None or _stricter(new_b, old_b, kind)):
                self.problems.append(f"{_label(path)}: {kind} bound tightened from {_fmt_bound(old_b)} to {_fmt_bound(new_b)}")
        for key in _LOWER_BOUNDS + _UPPER_BOUNDS:
            if not _is_number(new.get(key)) or key in _NUMERIC_BOUNDS:
                continue
            if key in old and not _is_number(old[key]):
                continue
            stricter = key not in old or (new[key] > old[key] if key in _LOWER_BOUNDS else new[key] < old[key])
            if stricter:
                was = old.get(key, "none")
                self.problems.append(f"{_label(path)}: constraint {key} tightened from {was} to {new[key]}")
        if "pattern" in new and old.get("pattern") != new["pattern"]:
            self.problems.append(f"{_label(path)}: pattern changed from {old.get('pattern')!r} to {new['pattern']!r}")

    def _compare_objects(self, old: Schema, new: Schema, path: str) -> None:
        old_props: dict[str, Schema] = old.get("properties", {})
        new_props: dict[str, Schema] = new.get("properties", {})
        old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
        for name in old_props:
            sub_path = f"{path}.{name}" if path else name
            if name not in new_props:
                self.problems.append(f"{_label(sub_path)} was removed")
            else:
                if name in new_required and name not in old_required:
                    self.problems.append(f"{_label(sub_path)} is now required (it was optional)")
                self.compare(old_props[name], new_props[name], sub_path)
        for name in new_props:
            if name not in old_props and name in new_required:
                sub_path = f"{path}.{name}" if path else name
                self.problems.append(f"new {_label(sub_path)} is required (new fields must be optional)")
        if old.get("additionalProperties") is not False and new.get("additionalProperties") is False:
            self.problems.append(f"{_label(path)} no longer allows additional properties")


def breaking_changes(old_schema: Schema, new_schema: Schema) -> list[str]:
    """Why `new_schema` is not an add-only evolution of `old_schema` (empty list: compatible).

    Breaking: a field removed, a field's type (or string format) changed, a new or formerly
    optional field now required, an enum value dropped, a validation constraint tightened.
    Allowed: new optional fields, new enum values, relaxed constraints, doc-only changes.
    """
    comparison = _Comparison(old_schema, new_schema)
    comparison.compare(old_schema, new_schema, "")
    return comparison.problems


# -- snapshots -----------------------------------------------------------------------------------

def snapshot_path(name: str, directory: Path = SNAPSHOT_DIR) -> Path:
    return directory / f"{name}.json"


def dump_schema(schema: Schema) -> str:
    return json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def load_snapshots(directory: Path = SNAPSHOT_DIR) -> dict[str, Schema]:
    """"Type.vN" -> committed schema."""
    return {p.name.removesuffix(".json"): json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))}


def current_schemas() -> dict[str, Schema]:
    """"Type.vN" -> JSON Schema of every registered payload (the envelope has no snapshot here)."""
    from shared.contract.catalogue import json_schemas

    return {name: schema for name, schema in json_schemas().items() if name != "Envelope"}


def refresh_snapshots(directory: Path = SNAPSHOT_DIR, *, force: bool = False) -> tuple[list[str], dict[str, list[str]]]:
    """Write snapshots that are missing or changed compatibly. Returns (written, refused-as-breaking).

    A breaking change is never written unless `force` (only for a version nobody has published yet).
    """
    directory.mkdir(parents=True, exist_ok=True)
    snapshots = load_snapshots(directory)
    written: list[str] = []
    refused: dict[str, list[str]] = {}
    for name, schema in sorted(current_schemas().items()):
        old = snapshots.get(name)
        if old == schema:
            continue
        problems = breaking_changes(old, schema) if old is not None else []
        if problems and not force:
            refused[name] = problems
            continue
        snapshot_path(name, directory).write_text(dump_schema(schema), encoding="utf-8")
        written.append(name)
    return written, refused
