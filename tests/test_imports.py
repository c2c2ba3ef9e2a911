"""Layers only import downward (issue 25.6): every module of the package, walked with `ast`,
module-level and function-level imports alike, imports only from its own layer or a lower
one, and no modules import each other round in a cycle.

The order, bottom to top (docs/architecture.md says what each layer owns):
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modexp"

LAYERS = (
    ("modexp", "naming", "cache", "files", "flops", "records"),  # pure helpers: names, caches, JSON, FLOPs, run records
    ("variants",),  # the variant registry: each variant's spec class, FLOP arch, role, metric
    ("spec", "device"),  # what the user may write (spec files, --device), checked
    ("data",),  # token sources, prepare, the data's facts and hashes
    ("memory",),  # memory estimates from flops.Arch (torch-free)
    ("plan",),  # spec -> runs, pure FLOP accounting
    ("models",),  # the reference model (plain PyTorch), decoding
    ("kernels",),  # fast paths the models' builder selects (never imported by models/)
    ("training",),  # the trainer, its evaluation, calibration, checkpoints
    ("runs",),  # run folders: the sweep runner, run files, status, loggers, sample
    ("bench",),  # modexp bench: models and trainers timed side by side
    ("analysis",),  # results -> fits, verdicts, figures
    ("grid",),  # plan --suggest-grid: plans candidates, reads the analysis's optima
    ("cli", "__main__"),  # the command line
)
"""Each entry one layer: the modules modexp.<name> and modexp.<name>.* (a name's longest match)."""

__doc__ += "\n".join(f"{i}. {', '.join(layer)}" for i, layer in enumerate(LAYERS))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """The layer index of modexp.<...>: its first name under modexp (the root: layer 0)."""
    top = module.split(".")[1] if "." in module else "modexp"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: in no layer of LAYERS (add it where it belongs)")


def type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The nodes under `if TYPE_CHECKING:`: imports for annotations, never run."""
    blocks = [n for n in ast.walk(tree) if isinstance(n, ast.If)
              and getattr(n.test, "id", getattr(n.test, "attr", None)) == "TYPE_CHECKING"]
    return {sub for b in blocks for stmt in b.body for sub in ast.walk(stmt)}


def imported(module: str, path: Path, annotations: bool = True) -> set[str]:
    """The package modules `module` imports anywhere in its file (functions included):
    `from a import b` names a.b when that is a module, else a; relative imports resolved.
    annotations=False leaves out those under `if TYPE_CHECKING:` (they never run)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = set() if annotations else type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs if subs and len(subs) == len(node.names) else {base} | subs
    return {m for m in found if m == "modexp" or m.startswith("modexp.")}


GRAPH = {m: imported(m, p) for m, p in MODULES.items()}
RUNTIME = {m: imported(m, p, annotations=False) for m, p in MODULES.items()}


def test_every_module_is_in_a_layer():
    assert all(layer(m) >= 0 for m in MODULES)
    assert len(MODULES) > 50  # the walk found the package


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
                    for m, targets in GRAPH.items() for t in targets if layer(t) > layer(m))
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    """Depth-first search over module -> imported module; a back edge is a cycle. Imports
    for annotations only (`if TYPE_CHECKING:`) never run, so they close no cycle (the upward
    test counts them all the same)."""
    state, cycles = {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(RUNTIME[m]):
            if t not in MODULES or t == m:
                continue
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_walk_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: an import inside a function and a relative one are edges."""
    src = tmp_path / "modexp" / "plan.py"
    src.parent.mkdir()
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import modexp.cli\n"
                   "def f():\n    from modexp.runs import runner\n    from .analysis import x\n")
    found = imported("modexp.plan", src)
    assert {"modexp.runs.runner", "modexp.analysis", "modexp.cli"} <= found
    assert "modexp.cli" not in imported("modexp.plan", src, annotations=False)
    assert layer("modexp.runs.runner") > layer("modexp.plan")
