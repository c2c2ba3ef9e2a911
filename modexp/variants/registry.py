"""The variant registry: each variant of the study is one entry, declared in its own module
(vanilla.py, mod.py, random.py, gate_one.py) and asked by every stage instead of comparing
kind strings.

An entry declares, torch-free, what the planner, the spec, the fingerprint and the analysis
need: its spec class (a `VariantConfig`: fields, FLOP architecture, routing pattern, what its
fingerprint leaves out), its role in the verdict (baseline, treatment or control) and the eval
loss that scores it (`score`). Its torch side, the routed layer module (whose `step` is its
decode step), is named by `layer`: a class, or "module:Class" that the models layer imports
(models/model.py), so nothing here imports torch or a layer above it. A variant defined in a
test file registers an entry with `registered(...)` and plans, trains, evaluates and is
plotted like the built-ins.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from modexp.variants.base import VariantConfig

BASELINE, TREATMENT, CONTROL = "baseline", "treatment", "control"
ROLES = (BASELINE, TREATMENT, CONTROL)
SCORES = ("topk", "causal")


@dataclass(frozen=True)
class Entry:
    """One variant of the study, as every stage sees it."""

    name: str
    """The entry's name, recorded in each run's plan entry (`entry`): how the analysis finds
    it again without the spec."""
    config: type[VariantConfig]
    """Its spec class; its `kind` field (a Literal) is what a spec writes to choose it."""
    role: str
    """baseline (the dense model every other is compared with), treatment or control."""
    layer: type | str | None = None
    """Its routed layer module (a class or "module:Class"), built by the model for each layer
    `config.capacities` gives a capacity; its `step` method is the layer's decode step. None:
    every layer is the dense Block."""
    score: str = "topk"
    """The eval loss that scores it in the verdict: "topk" (the training routing's: a dense
    model's only one) or "causal" (what sampling gets: top-k routing sees later tokens)."""
    matches: Callable[[VariantConfig], bool] | None = None
    """When entries share a spec class (router: learned or random), which configs are this
    entry's; None: every config of its class."""

    def __post_init__(self):
        if self.role not in ROLES or self.score not in SCORES:
            raise ValueError(f"entry {self.name}: role in {ROLES}, score in {SCORES}")

    @property
    def decides(self) -> bool:
        """Whether its routed layers make a causal decision per token (what sampling and the
        causal eval pass route by; the routing figures draw it): the entries scored by their
        causal loss."""
        return self.score == "causal"

    @property
    def kind(self) -> str:
        """The spec's `kind` value of this entry's class."""
        return self.config.kind_name()


_ENTRIES: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    """Add an entry (its name unique; a kind shared only by entries of the same class)."""
    if entry.name in _ENTRIES:
        raise ValueError(f"variant entry {entry.name!r} is registered already")
    clash = [e.name for e in _ENTRIES.values() if e.kind == entry.kind and e.config is not entry.config]
    if clash:
        raise ValueError(f"kind {entry.kind!r} is {clash[0]}'s, with another spec class")
    _ENTRIES[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    """Remove an entry (a test's toy variant, after the test)."""
    _ENTRIES.pop(name)


@contextmanager
def registered(*entries: Entry) -> Iterator[tuple[Entry, ...]]:
    """The entries registered for the duration of a with block (tests)."""
    for e in entries:
        register(e)
    try:
        yield entries
    finally:
        for e in entries:
            unregister(e.name)


def entries() -> list[Entry]:
    """Every entry, in registration order (the built-ins first)."""
    return list(_ENTRIES.values())


def first(role: str) -> Entry:
    """The first registered entry of a role (the built-ins register first: vanilla, mod)."""
    return next(e for e in _ENTRIES.values() if e.role == role)


def kinds() -> list[str]:
    """The spec's allowed `kind` values, in registration order."""
    return list(dict.fromkeys(e.kind for e in _ENTRIES.values()))


def config_class(kind: str) -> type[VariantConfig] | None:
    """The spec class a `kind` value selects (None: no entry has it)."""
    return next((e.config for e in _ENTRIES.values() if e.kind == kind), None)


def entry_of(config: VariantConfig) -> Entry:
    """The entry a validated variant config is an instance of."""
    for e in _ENTRIES.values():
        if type(config) is e.config and (e.matches is None or e.matches(config)):
            return e
    raise LookupError(f"no variant entry for {config!r}")


def named(name: str) -> Entry:
    """The entry of that name (a plan entry's `entry`)."""
    return _ENTRIES[name]


def of_run(plan: dict) -> Entry:
    """The entry of a plan entry: its `entry`, or for plan files written before the registry
    (no `entry`) the built-in its kind and router name."""
    name = plan.get("entry")
    if not isinstance(name, str):
        kind, router = plan.get("kind"), plan.get("router")
        name = "random" if kind == "mod" and router == "random" else kind
    return _ENTRIES[name]
