"""The package layout's acceptance checks (issue #14, "The house"), read from the source itself.

* ``import tilechord`` defines no Celery task: the modules that define tasks load only
  when an app is made (``celery -A tilechord`` asks for ``tilechord.app``).
* No import cycle among tilechord's modules, so the packages really form layers.
* Every module under 500 lines, every function under 60.
* And the tests' own layout: no test module imports another or conftest (helpers live in
  tests/support), and test file names are unique (no folder of tests is a package).

Nothing runs but a fresh interpreter for the first check; the rest is :mod:`ast`.
Imports inside functions are checked for cycles too, in a test of their own: see
:func:`test_no_import_cycle_counting_imports_inside_functions` for why.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import tilechord

SRC = Path(tilechord.__file__).resolve().parent.parent
PACKAGE = SRC / "tilechord"

MAX_MODULE_LINES = 500  # a module has fewer lines than this
MAX_FUNCTION_LINES = 60  # and a function (its def line to its last, docstring included) fewer than this


# ------------------------------------------------------------------------------ the modules


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(), filename=str(modules()[name]))


# ---------------------------------------------------------------------------- the imports


@dataclass(frozen=True)
class Import:
    """One import statement's target module, where it is and whether it runs at import time."""

    target: str
    line: int
    module_level: bool


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: list[ast.stmt], module_level: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement, recursively, with whether it runs when the module is imported.

    ``if TYPE_CHECKING:`` bodies never run and are left out; a function's body runs only
    when called (a class body does run at import).
    """
    for node in body:
        yield node, module_level
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.orelse, module_level)
            continue
        inner = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                stmts = [c for c in children if isinstance(c, ast.stmt)]
                for handler in children:
                    if isinstance(handler, (ast.ExceptHandler, ast.match_case)):
                        stmts.extend(handler.body)
                yield from _statements(stmts, module_level and not inner)


def _resolve(name: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in module *name*."""
    if level == 0:
        return module or ""
    package = name if is_package(name) else name.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{module}" if module else package


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports(name: str) -> list[Import]:
    """The tilechord modules module *name* imports.

    ``from pkg import x`` imports ``pkg.x`` when that is a module, else ``pkg``.  Importing
    ``a.b.c`` first runs the packages ``a`` and ``a.b``: those count too, but for the
    importer's own ancestors, which Python has always started running before the importer
    itself (an *explicit* import of one, ``from .. import x``, does count).
    """
    found: list[Import] = []
    for node, module_level in _statements(tree(name).body, module_level=True):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node.level, node.module)
            subs = [f"{base}.{alias.name}" for alias in node.names]
            targets = [sub for sub in subs if sub in modules()]
            if len(targets) < len(subs):
                targets.append(base)  # names that are not modules come from the package itself
        for target in targets:
            if target not in modules():
                continue
            implicit = [a for a in _ancestors(target) if a not in _ancestors(name) and a != name]
            for each in (*implicit, target):
                if each != name:
                    found.append(Import(each, node.lineno, module_level))
    return found


def graph(module_level_only: bool) -> dict[str, dict[str, int]]:
    """Module -> {module it imports: the line of the first such import}."""
    edges: dict[str, dict[str, int]] = {}
    for name in modules():
        edges[name] = {}
        for imp in imports(name):
            if imp.module_level or not module_level_only:
                edges[name].setdefault(imp.target, imp.line)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
    """Per strongly connected group of modules: one cycle in it (the first module repeated at
    the end), and the whole group (every module on some cycle with the others)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the package is small enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [(_a_cycle_in(group, edges), group) for group in sorted(groups)]


def _a_cycle_in(group: list[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """The shortest way from the group's first module back to itself, inside the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges[node]):
            if nxt == start:
                return [*paths[node], start]
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start} in {group}")


def describe(found: tuple[list[str], list[str]], edges: dict[str, dict[str, int]]) -> str:
    cycle, group = found
    steps = [f"{a} (line {edges[a][b]})" for a, b in itertools.pairwise(cycle)]
    text = " -> ".join([*steps, cycle[-1]])
    others = sorted(set(group) - set(cycle))
    return text + (f"\n  (tied up with it too: {', '.join(others)})" if others else "")


# ------------------------------------------------------------------------------ the checks


TASK_MODULES_PROBE = """
import json, sys
import tilechord
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("tilechord", "celery"))))
apps = []
if "celery._state" in sys.modules:
    apps = [repr(app) for app in sys.modules["celery._state"]._apps]
print(json.dumps(apps))
"""


def _names_a_task_maker(node: ast.expr) -> bool:
    """``<app>.task``, ``shared_task`` or ``Task``: what makes or subclasses a Celery task."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr in ("task", "Task")
    return isinstance(node, ast.Name) and node.id in ("shared_task", "Task")


def task_modules() -> set[str]:
    """The modules that define Celery tasks: they call or decorate with ``<app>.task`` or
    ``shared_task``, or subclass ``Task``."""
    found = set()
    for name in modules():
        for node in ast.walk(tree(name)):
            makers: list[ast.expr] = []
            if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name | ast.Attribute):
                continue
            if isinstance(node, ast.Call):
                makers = [node]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                makers = list(node.decorator_list)
            elif isinstance(node, ast.ClassDef):
                makers = list(node.bases)
            if any(_names_a_task_maker(m) for m in makers):
                found.add(name)
    return found


def fresh_import(code: str) -> list[str]:
    """Run *code* in a fresh interpreter with a clean environment; its stdout lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TILECHORD_", "CELERY_"))}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_modules_that_define_tasks_are_found() -> None:
    """The check below has teeth: tasks exist, are found, and making an app loads them."""
    defining = task_modules()
    assert defining, "no module defines a Celery task: the search below is broken"
    code = (
        "import json, os, sys\n"
        "os.environ['TILECHORD_REDIS_URL'] = 'redis://127.0.0.1:1/0'\n"
        "import tilechord\n"
        "tilechord.app\n"
        "print(json.dumps(sorted(sys.modules)))\n"
        "print(len(sys.modules['celery._state']._apps))\n"
    )
    loaded_line, apps_line = fresh_import(code)[-2:]
    loaded = set(json.loads(loaded_line))
    assert defining <= loaded, f"making the app did not load {sorted(defining - loaded)}"
    assert int(apps_line) >= 1, "celery._state no longer records the apps made: the app check is blind"


def test_import_tilechord_defines_no_task_and_makes_no_app() -> None:
    loaded_line, apps_line = fresh_import(TASK_MODULES_PROBE)[-2:]
    loaded = set(json.loads(loaded_line))
    early = sorted(({"tilechord.worker.tasks"} | task_modules()) & loaded)
    assert not early, f"`import tilechord` imports modules that define Celery tasks: {early}"
    assert json.loads(apps_line) == [], "`import tilechord` made a Celery app"


def test_no_import_cycle_among_module_level_imports() -> None:
    """What runs at import: a cycle here works only by the order modules happen to load in."""
    edges = graph(module_level_only=True)
    found = [describe(c, edges) for c in cycles(edges)]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    """A deferred import moves a dependency to run time; it does not turn it around.

    The layers run one way (cli -> client -> worker -> ops/imaging -> errors/config), so
    an import inside a function that points back up is a cycle too, hidden from Python
    until the function runs.  ``if TYPE_CHECKING:`` imports, which never run, do not count.
    """
    edges = graph(module_level_only=False)
    found = [describe(c, edges) for c in cycles(edges)]
    assert not found, "import cycles (imports inside functions included):\n" + "\n".join(found)


def _functions(node: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for child in ast.walk(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child


def test_every_module_is_under_500_lines() -> None:
    long = {
        str(path.relative_to(SRC)): count
        for path in modules().values()
        if (count := len(path.read_text().splitlines())) >= MAX_MODULE_LINES
    }
    assert not long, f"modules of {MAX_MODULE_LINES} lines or more: {long}"


def test_every_function_is_under_60_lines() -> None:
    long = []
    for name, path in modules().items():
        for func in _functions(tree(name)):
            length = (func.end_lineno or func.lineno) - func.lineno + 1
            if length >= MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(SRC)}:{func.lineno} {func.name}() is {length} lines")
    assert not long, f"functions of {MAX_FUNCTION_LINES} lines or more:\n" + "\n".join(long)


# ------------------------------------------------------------------------- the tests' own


TESTS = Path(__file__).resolve().parent.parent


def _test_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "support" not in p.relative_to(TESTS).parts)


def test_test_modules_import_no_test_module_nor_conftest() -> None:
    """Shared helpers live in tests/support; fixtures in conftest.py, which pytest loads itself."""
    names = {p.stem for p in _test_modules()}
    wrong = []
    for path in _test_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = [node.module]
            else:
                continue
            wrong += [f"{path.relative_to(TESTS)}:{node.lineno} imports {n}" for n in found if n in names]
    assert not wrong, "\n".join(wrong)


def test_test_file_names_are_unique_and_no_folder_is_a_package() -> None:
    """Without __init__.py files pytest imports test modules by their bare names."""
    stems = [p.stem for p in _test_modules() if p.name != "conftest.py"]
    assert sorted(s for s in set(stems) if stems.count(s) > 1) == []
    assert [str(p.relative_to(TESTS)) for p in TESTS.rglob("__init__.py")] == []
