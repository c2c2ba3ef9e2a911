"""Reading a spec: YAML -> `ExperimentSpec`, or `SpecError` with one line per bad field.

Pydantic's errors become `field.path: what is wrong; allowed: ...` lines (an unknown key gets
its closest allowed name), every problem in a file at once; the CLI turns them into exit code 2.
A key given twice in one mapping is refused with its line (PyYAML would keep the last).
`--set PATH=VALUE` overrides (`apply_overrides`) change the loaded YAML before it is validated,
so they are checked like the file, their errors name them, and the resolved spec every run
records (run.json) carries them.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Sequence

import yaml
from pydantic import ValidationError

from modexp import variants
from modexp.spec.config import (SPEC_DIR, BudgetGrid, DataConfig, ExperimentSpec, FlopsConfig,
                                ModelConfig, SpecError, TrainConfig)


def _loc(loc: tuple) -> str:
    """Pydantic error location -> dotted field path, dropping union tags like 'grid'."""
    parts = [str(p) for p in loc if p not in ("function-after", "number", "grid")]
    return ".".join(p if not p.isdigit() else f"[{p}]" for p in parts).replace(".[", "[")


def _one_of(names: list[str], quote: str = "'") -> str:
    """'a', 'b' or 'c'."""
    q = [f"{quote}{n}{quote}" for n in names]
    return " or ".join(q) if len(q) < 3 else ", ".join(q[:-1]) + " or " + q[-1]


def _message(err: dict, raw: dict) -> str:
    field = _loc(err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1], raw)
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{field}: unknown key{hint}; allowed: {', '.join(allowed)}"
    msg = err["msg"].removeprefix("Value error, ")
    head, _, rest = msg.partition(": ")
    if err["type"] == "value_error" and rest and head in _allowed_keys(err["loc"], raw):
        field, msg = f"{field}.{head}" if field else head, rest  # a validator naming its field
    if err["type"] == "union_tag_invalid":
        msg = f"kind must be {_one_of(variants.kinds())}"
    if err["type"] == "union_tag_not_found":
        msg = f"missing 'kind' ({_one_of(variants.kinds(), quote='')})"
    return f"{field or '(top level)'}: {msg}"


def _allowed_keys(loc: tuple, raw: dict) -> list[str]:
    """The field names of the config class an error location points into (a variant's: the
    spec class of the registry entry its `kind` names)."""
    classes = {"data": DataConfig, "flops": FlopsConfig, "models": ModelConfig, "grid": BudgetGrid,
               "train": TrainConfig}
    if len(loc) >= 2 and loc[0] == "variants":
        entry = (raw.get("variants") or {}).get(loc[1])
        kind = entry.get("kind") if isinstance(entry, dict) else None
        cls = variants.config_class(kind) if isinstance(kind, str) else None
        return sorted(cls.model_fields) if cls is not None else ["kind"]
    cls = ExperimentSpec
    for part in loc:  # the innermost known section wins, e.g. models[0] -> ModelConfig
        cls = classes.get(part, cls) if isinstance(part, str) else cls
    return sorted(cls.model_fields)


def parse_spec(raw: object, source: str = "<spec>", spec_dir: str | Path | None = None) -> ExperimentSpec:
    """Validate a loaded YAML mapping; raise SpecError listing every bad field. `spec_dir`: the
    folder relative data paths resolve against (the spec file's; None: taken as given)."""
    if not isinstance(raw, dict):
        raise SpecError(source, ["(top level): the spec must be a YAML mapping of keys"])
    try:
        return ExperimentSpec.model_validate(raw, context={SPEC_DIR: spec_dir})
    except ValidationError as e:
        problems = []
        for err in e.errors():  # cross-field checks arrive as one top-level error; split them
            msg = _message(err, raw)
            problems += msg.removeprefix("(top level): ").split("; ") if not err["loc"] else [msg]
        raise SpecError(source, problems) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing a key that appears twice in one mapping (SafeLoader keeps
    the last silently: a second `train:` section would drop the first). Merge keys (`<<`) may
    still be overridden, as YAML means them to be."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.setdefault(key, key_node.start_mark.line)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if line != key_node.start_mark.line:
                    raise DuplicateKey(key, line, key_node.start_mark)
        return super().construct_mapping(node, deep)


class DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping: where, and where it first appeared."""

    def __init__(self, key, first_line: int, mark):
        super().__init__(None, None, f"duplicate key {key!r} (first given on line "
                         f"{first_line + 1}); each key may appear once", mark)


def _yaml_error(e: yaml.YAMLError) -> str:
    """A YAML error as 'line L, column C: what' (a duplicate key is not a syntax error)."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    what = e.problem if isinstance(e, DuplicateKey) else f"YAML syntax error: {getattr(e, 'problem', e)}"
    return f"{where}{what}"


def read_yaml(path: str | Path) -> object:
    """A spec file's YAML as plain data; SpecError if missing, not UTF-8, not YAML, or a key
    repeats."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), ["file not found (expected a YAML experiment spec)"])
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [f"not a text file (byte {e.start} is not UTF-8): expected a "
                                    "YAML experiment spec"]) from None
    except yaml.YAMLError as e:
        raise SpecError(str(path), [_yaml_error(e)]) from None


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Read and validate a spec file, `--set` overrides applied first; SpecError on a missing
    file, a bad override or any bad field (a field an override set names the override).
    A relative data.source is read from the spec file's folder."""
    raw = read_yaml(path)
    if overrides:
        if not isinstance(raw, dict):
            raise SpecError(str(path), ["(top level): the spec must be a YAML mapping of keys"])
        raw, paths = apply_overrides(raw, overrides)
        try:
            return parse_spec(raw, str(path), Path(path).parent)
        except SpecError as e:
            raise SpecError(e.source, [_naming_override(p, paths) for p in e.problems]) from None
    return parse_spec(raw, str(path), Path(path).parent)


def resolved_spec_yaml(path: str | Path, overrides: Sequence[str] = ()) -> str:
    """The spec as modexp runs it, overrides and defaults applied (`modexp plan --print-spec`)."""
    return yaml.safe_dump(spec_to_dict(load_spec(path, overrides)), sort_keys=False,
                          allow_unicode=True)


# ---------------------------------------------------------------- --set PATH=VALUE
_STEP = re.compile(r"""\[(?:(\d+)|'([^']*)'|"([^"]*)")\]|\.?([^.\[\]]+)""")


def _steps(path: str) -> list[str | int] | None:
    """'models[1].d_model' or 'models.1.d_model' -> ['models', 1, 'd_model']; quoted keys
    (variants['mod.v2']) may hold dots. None if the path does not parse."""
    out, at = [], 0
    while at < len(path):
        m = _STEP.match(path, at)
        if m is None or (at == 0 and path.startswith(".")):
            return None
        index, single, double, name = m.groups()
        out.append(int(index) if index is not None else
                   name if name is not None else single if single is not None else double)
        at = m.end()
    return out or None


def apply_overrides(raw: dict, overrides: Sequence[str]) -> tuple[dict, dict[str, str]]:
    """The loaded spec with each `PATH=VALUE` set (a copy), and field path -> override.

    PATH is dotted keys into the spec with list indices as `[i]` or `.i`; VALUE is YAML
    (`1e-3`, `true`, `[0, 1]`, `{kind: vanilla}`; empty: null), checked with the spec's fields.
    A path through a list index that does not exist, or into a value that is not a mapping or
    list, is an error naming the override."""
    import copy

    raw, paths, problems = copy.deepcopy(raw), {}, []
    for ov in overrides:
        key, eq, text = ov.partition("=")
        steps = _steps(key.strip())
        if not eq or steps is None:
            problems.append(f"--set {ov}: expected PATH=VALUE, e.g. train.lr=1e-3 or "
                            "models[0].d_model=64")
            continue
        try:
            value = yaml.load(text, Loader=UniqueKeyLoader)
        except yaml.YAMLError as e:
            problems.append(f"--set {ov}: the value is not YAML ({_yaml_error(e)})")
            continue
        field, why = _set(raw, steps, value)
        if why:
            problems.append(f"--set {ov}: {why}")
        paths[field] = ov
    if problems:
        raise SpecError("--set", problems)
    return raw, paths


def _set(node, steps: list[str | int], value) -> tuple[str, str | None]:
    """Set `value` at `steps` inside node, creating mappings on the way: (the field's path as
    field errors write it, e.g. models[1].d_model; None, or why it cannot be set)."""
    field = ""
    for i, step in enumerate(steps):
        where = field or "the spec"
        if isinstance(node, list):
            if not (isinstance(step, int) or step.isdigit()):
                return field, f"{where} is a list: index it with [i] or .i, not {step!r}"
            key = int(step)
            if key >= len(node):
                return field, (f"{where} has {len(node)} entries (indices 0..{len(node) - 1}); "
                               f"{key} is not one of them")
        elif isinstance(node, dict):
            key = step  # an int key (a layer index of `layers`) matches its digits
            if isinstance(step, str) and step.isdigit() and step not in node and int(step) in node:
                key = int(step)
        else:
            return field, f"{where} is {node!r}, not a mapping or list to set a field in"
        field += f"[{key}]" if str(key).isdigit() else (f".{key}" if field else str(key))
        if i == len(steps) - 1:
            node[key] = value
        else:
            if isinstance(node, dict) and key not in node:
                node[key] = {}
            node = node[key]
    return field, None


def _naming_override(problem: str, paths: dict[str, str]) -> str:
    """A field error, with the override that set the field (or the entry around it) named."""
    field = problem.split(": ", 1)[0]
    for path, ov in paths.items():
        parent = path.rsplit(".", 1)[0] if "." in path else path
        if field == path or field.startswith((path + ".", path + "[", parent + ".")) \
                or path.startswith((field + ".", field + "[")):
            return f"{problem} (from --set {ov})"
    return problem


def spec_to_dict(spec: ExperimentSpec) -> dict:
    """The resolved spec as plain JSON-able data (written next to every run)."""
    return spec.model_dump(mode="json")
