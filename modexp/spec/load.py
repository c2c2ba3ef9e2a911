"""Reading a spec: YAML -> `ExperimentSpec`, or `SpecError` with one line per bad field.

Pydantic's errors become `field.path: what is wrong; allowed: ...` lines (an unknown key gets
its closest allowed name), every problem in a file at once; the CLI turns them into exit code 2.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import ValidationError

from modexp.spec.config import (SPEC_DIR, BudgetGrid, DataConfig, ExperimentSpec, FlopsConfig,
                                ModelConfig, ModVariant, SpecError, TrainConfig, VanillaVariant)


def _loc(loc: tuple) -> str:
    """Pydantic error location -> dotted field path, dropping union tags like 'mod'."""
    parts = [str(p) for p in loc if p not in ("vanilla", "mod", "function-after", "number", "grid")]
    return ".".join(p if not p.isdigit() else f"[{p}]" for p in parts).replace(".[", "[")


def _message(err: dict) -> str:
    field = _loc(err["loc"])
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{field}: unknown key{hint}; allowed: {', '.join(allowed)}"
    msg = err["msg"].removeprefix("Value error, ")
    head, _, rest = msg.partition(": ")
    if err["type"] == "value_error" and rest and head in _allowed_keys(err["loc"]):
        field, msg = f"{field}.{head}" if field else head, rest  # a validator naming its field
    if err["type"] == "union_tag_invalid":
        msg = "kind must be 'vanilla' or 'mod'"
    if err["type"] == "union_tag_not_found":
        msg = "missing 'kind' (vanilla or mod)"
    return f"{field or '(top level)'}: {msg}"


def _allowed_keys(loc: tuple) -> list[str]:
    """The field names of the config class an error location points into."""
    classes = {"data": DataConfig, "flops": FlopsConfig, "models": ModelConfig, "grid": BudgetGrid,
               "train": TrainConfig, "vanilla": VanillaVariant, "mod": ModVariant}
    cls = ExperimentSpec
    for part in loc:  # the innermost known section wins, e.g. variants.<name>.mod -> ModVariant
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
            msg = _message(err)
            problems += msg.removeprefix("(top level): ").split("; ") if not err["loc"] else [msg]
        raise SpecError(source, problems) from None


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate a spec file; raise SpecError on a missing file or any bad field."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(str(path), ["file not found (expected a YAML experiment spec)"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [f"not a text file (byte {e.start} is not UTF-8): expected a "
                                    "YAML experiment spec"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(str(path), [f"{where}YAML syntax error: {getattr(e, 'problem', e)}"]) from None
    return parse_spec(raw, str(path), path.parent)


def spec_to_dict(spec: ExperimentSpec) -> dict:
    """The resolved spec as plain JSON-able data (written next to every run)."""
    return spec.model_dump(mode="json")
