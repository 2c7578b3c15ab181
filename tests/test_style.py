"""The package's shape, checked: ruff clean, no import circle, no module importing a later stage,
no backslash continuation, no function over 60 lines, and `trainer.py` kept to the glue.

The stage order is the data path's (docs/architecture.md): a module may import modules of its own
stage or of an earlier one, never of a later one, so each stage can be read without the ones after it.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("opid_trl", "environments")

#: The stages of `opid_trl`, earliest first: a module's stage is the first prefix that matches it.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("records", ("opid_trl.trajectory", "opid_trl.untrusted_text", "opid_trl.values", "opid_trl.files", "opid_trl.distributed",
                 "opid_trl.config", "opid_trl.checkpoints")),
    ("algorithms", ("opid_trl.algorithms",)),
    ("generation", ("opid_trl.generation",)),
    ("rollout", ("opid_trl.rollout",)),
    ("skills", ("opid_trl.skills",)),
    ("reporting", ("opid_trl.reporting",)),
    ("loss", ("opid_trl.loss",)),
    ("trainer", ("opid_trl.assembly", "opid_trl.trainer")),
    ("runs", ("opid_trl.runs", "opid_trl.testing", "opid_trl")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every project module ``path`` imports, anywhere in it (functions and TYPE_CHECKING included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def stage_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no stage of STAGES")


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for child in graph.get(node, ()):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in on_stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_no_import_circle():
    # a package's __init__ re-exports its modules; those edges are not a dependency of the stage
    graph = {name: {t for t in targets if not (name.endswith("__init__") or t.startswith(name + "."))}
             for name, targets in import_graph().items()}
    assert cycles(graph) == []


def test_the_circle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_a_later_stage():
    later = [(name, target) for name, targets in import_graph().items() if name.startswith("opid_trl")
             for target in targets if target.startswith("opid_trl") and target != "opid_trl"
             and stage_of(target) > stage_of(name)]
    assert later == []


def test_environments_never_import_the_trainer_package():
    assert [(n, t) for n, ts in import_graph().items() if n.startswith("environments")
            for t in ts if t.startswith("opid_trl")] == []


def _python_files() -> list[Path]:
    folders = ("opid_trl", "environments", "benchmarks", "tests")
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")] + [ROOT / "train.py", ROOT / "evaluate.py"]


def backslash_continuations(source: str) -> list[int]:
    """Lines of ``source`` that end with a backslash continuation (not inside a string)."""
    inside_strings = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING:
            inside_strings.update(range(token.start[0], token.end[0]))  # lines a string runs past
    return [number for number, line in enumerate(source.splitlines(), 1)
            if line.rstrip().endswith("\\") and number not in inside_strings and not line.lstrip().startswith("#")]


def test_no_backslash_continuation():
    found = [f"{path.relative_to(ROOT)}:{line}" for path in _python_files()
             for line in backslash_continuations(path.read_text())]
    assert found == []


def test_the_continuation_check_finds_one():
    assert backslash_continuations('x = 1 + \\\n    2\ny = """a \\\nb"""\n') == [1]


def test_no_function_over_sixty_lines_in_the_package():
    long = []
    for path in (ROOT / "opid_trl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_the_trainer_module_stays_the_glue():
    assert len((ROOT / "opid_trl" / "trainer.py").read_text().splitlines()) <= 350


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_folder_is_a_regular_package():
    """A folder of modules without ``__init__.py`` imports from a source tree (a namespace package)
    but is left out of the built wheel (`packages = find:`), so an installed copy lacks it."""
    folders = {path.parent for name in ("opid_trl", "environments") for path in (ROOT / name).rglob("*.py")
               if "__pycache__" not in path.parts}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()) == []


def test_ruff_sees_every_module_of_the_package():
    """Ruff skips what .gitignore matches: a pattern matching a package folder would hide it."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--show-files", str(ROOT)],
                            capture_output=True, text=True, cwd=ROOT)
    seen = {Path(line.strip()).resolve() for line in result.stdout.splitlines() if line.strip().endswith(".py")}
    modules = {p.resolve() for p in (ROOT / "opid_trl").rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(str(p.relative_to(ROOT)) for p in modules - seen) == []
