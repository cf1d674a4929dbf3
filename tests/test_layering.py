"""The shape of the code: who may import whom, no cycles, sizes, private names.

Every check reads the sources with :mod:`ast`; nothing is imported. The rules (docs/design.md,
"Layout"; ``pyro_vae/infer/__init__.py``):

1. **Infer subpackages** (``layering``): ``runtime`` -> ``pair`` -> ``objectives`` ->
   ``compile`` -> {``training``, ``evidence``}; a module of ``pyro_vae/infer/<sub>/`` imports
   only from its own subpackage and those before it; ``training`` and ``evidence`` do not import
   each other, and no subpackage imports the facade ``pyro_vae.infer`` itself. Every module of
   ``pyro_vae/infer/`` but its ``__init__`` lives in one of these subpackages.
2. **Package arrows** (``layering``): ``pyro_vae.models`` -> ``pyro_vae.nets`` only;
   ``pyro_vae.infer`` -> nothing of ours outside it; ``pyro_vae.diagnostics`` ->
   ``pyro_vae.infer`` only; ``pyro_vae.nets`` and ``pyro_vae.data`` -> nothing of ours;
   ``pyro_vae.runs*``, ``pyro_vae.cli*``, the facade ``pyro_vae`` and ``experiments/`` ->
   anything. Rules 1 and 2 count every import, at module level or in a function.
3. **No import cycle** among the modules of ``pyro_vae/infer/`` (``cycle``), over module-level
   imports (those that run on import: not in a function body nor under ``if TYPE_CHECKING:``).
   ``from P import name`` is an edge to the module ``P.name`` when there is one, else to ``P``;
   the implicit import of a module's parent packages is not an edge (it is always safe).
4. **Function-local imports** (``local-import``): none of a ``pyro_vae`` module in a function
   body in ``pyro_vae/infer/``; elsewhere in ``pyro_vae/`` only in ``cli*`` and ``runs*`` (for
   start-up time). Function-local imports of third-party modules (``torch._inductor``,
   ``sklearn``, ...) are allowed everywhere.
5. **Size** (``size``): a module of ``pyro_vae/`` has at most 400 lines unless a line of its
   module docstring starts with ``Size:`` and says why; a function or method has at most 80
   lines, counted as its *body without the docstring*: from the first statement after the
   docstring to the function's last line, blank lines and comments inside included (the
   decorators, signature and docstring are not counted). Nested functions count towards the
   function around them and are checked on their own too.
6. **Private names** (``private``): a module-level ``_name`` of one of our modules is not
   imported by any other module of ``pyro_vae/`` or ``experiments/`` (``from m import _name``,
   or ``m._name`` on an imported module ``m``); tests may reach private helpers to test them.
   And each private name means one thing: a module-level ``_name`` (function, class or
   assignment) is defined in one module of ``pyro_vae/`` only.

Each failure names the file (with line) or function, and the rule in brackets.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pyro_vae"
EXPERIMENTS = ROOT / "experiments"

INFER_ORDER = {
    "runtime": 0,
    "pair": 1,
    "objectives": 2,
    "compile": 3,
    "training": 4,
    "evidence": 4,
}
"""Rank of each ``pyro_vae/infer/`` subpackage; an import goes to a lower rank or the same one."""

EVERYTHING = None
ALLOWED = {
    "models": {"models", "nets"},
    "infer": {"infer"},
    "diagnostics": {"diagnostics", "infer"},
    "nets": {"nets"},
    "data": {"data"},
    "datafiles": {"datafiles", "data"},
    "runs": EVERYTHING,
    "cli": EVERYTHING,
    "__main__": EVERYTHING,  # python -m pyro_vae: the version and where the docs are
    "pyro_vae": EVERYTHING,  # the facade pyro_vae/__init__.py
    "experiments": EVERYTHING,
}
"""Package-level arrows: the parts of ``pyro_vae`` each part may import."""

LOCAL_IMPORTS_ALLOWED = {"cli", "runs"}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# Only for files another engineer is reworking right now: checked, but their violations do not
# fail yet. Empty: every file satisfies every rule. Remove an entry once its change has landed.
ALLOWLIST: dict[str, set[str]] = {}
"""Rule name -> relative paths (``fnmatch`` patterns) exempt from that rule."""


@dataclass
class Import:
    """One edge of an import statement: ``target`` is the module imported (ours or not)."""

    target: str
    line: int
    local: bool  # inside a function body
    function: str | None  # qualified name of the enclosing function, if local
    type_only: bool = False  # under ``if TYPE_CHECKING:``: never runs


@dataclass
class Module:
    """A parsed source file."""

    name: str  # dotted, e.g. pyro_vae.infer.pair.sites (a package is its __init__)
    path: Path
    tree: ast.Module
    lines: int
    imports: list[Import] = field(default_factory=list)

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


@cache
def modules() -> dict[str, Module]:
    """Every module of ``pyro_vae/`` and ``experiments/``, by dotted name."""
    out = {}
    for path in sorted([*PACKAGE.rglob("*.py"), *EXPERIMENTS.rglob("*.py")]):
        if "__pycache__" in path.parts:
            continue
        source = path.read_text()
        tree = ast.parse(source, filename=str(path))
        mod = Module(_module_name(path), path, tree, len(source.splitlines()))
        out[mod.name] = mod
    for mod in out.values():
        mod.imports = list(_imports(mod, out))
    return out


def _resolve_from(mod: Module, node: ast.ImportFrom) -> str:
    """The absolute module of ``from <module> import ...`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if not _is_package(mod.path):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _ImportVisitor(ast.NodeVisitor):
    def __init__(self, mod: Module, known: dict[str, Module]):
        self.mod, self.known = mod, known
        self.stack: list[str] = []  # enclosing classes and functions
        self.functions = 0
        self.type_checking = 0
        self.found: list[Import] = []

    def _scope(self, node, is_function):
        self.stack.append(node.name)
        self.functions += is_function
        self.generic_visit(node)
        self.functions -= is_function
        self.stack.pop()

    def visit_FunctionDef(self, node):
        self._scope(node, True)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._scope(node, False)

    def visit_If(self, node):
        test = node.test
        guard = getattr(test, "id", None) or getattr(test, "attr", None)
        if guard != "TYPE_CHECKING":
            self.generic_visit(node)
            return
        self.type_checking += 1
        for child in node.body:
            self.visit(child)
        self.type_checking -= 1
        for child in node.orelse:
            self.visit(child)

    def _add(self, target, node):
        local = self.functions > 0
        where = ".".join(self.stack) if local else None
        self.found.append(Import(target, node.lineno, local, where, self.type_checking > 0))

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node):
        base = _resolve_from(self.mod, node)
        plain = False
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.known:  # ``from package import module``
                self._add(sub, node)
            else:
                plain = True
        if plain:  # ``from module import name``
            self._add(base, node)


def _imports(mod: Module, known: dict[str, Module]) -> list[Import]:
    visitor = _ImportVisitor(mod, known)
    visitor.visit(mod.tree)
    return visitor.found


def _ours(target: str) -> bool:
    return target == "pyro_vae" or target.startswith("pyro_vae.")


def _part(name: str) -> str | None:
    """The package-level part of a module: models, infer, ..., cli, runs, pyro_vae, experiments."""
    parts = name.split(".")
    if parts[0] == "experiments":
        return "experiments"
    if len(parts) == 1:
        return "pyro_vae"
    for prefix in ("cli", "runs"):
        if parts[1].startswith(prefix):
            return prefix
    return parts[1] if parts[1] in ALLOWED else None


def _infer_sub(name: str) -> str | None:
    """The subpackage of a module of ``pyro_vae.infer`` (None for the facade itself)."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 else None


def _allowlisted(rule: str, mod: Module) -> bool:
    return any(fnmatch(mod.rel, pattern) for pattern in ALLOWLIST.get(rule, ()))


def _report(rule: str, problems: list[tuple[Module, str]]) -> None:
    failures = [message for mod, message in problems if not _allowlisted(rule, mod)]
    assert not failures, f"{len(failures)} violation(s) of [{rule}]:\n" + "\n".join(failures)


def _where(mod: Module, imp: Import) -> str:
    inside = f" (in {imp.function})" if imp.function else ""
    return f"{mod.rel}:{imp.line}{inside}"


# -- rule 1 and 2: layering ---------------------------------------------------------------------


def _infer_problem(mod: Module, target: str) -> str | None:
    own, other = _infer_sub(mod.name), _infer_sub(target)
    if own is None or own == other:
        return None
    if other is None:
        return "imports the facade pyro_vae.infer (a subpackage imports subpackages)"
    if other not in INFER_ORDER:
        return f"imports {target}, which is in no subpackage of the order"
    if INFER_ORDER[other] > INFER_ORDER[own]:
        return f"imports upwards: {own} -> {other} (order: {' -> '.join(INFER_ORDER)})"
    if INFER_ORDER[other] == INFER_ORDER[own]:
        return f"imports a sibling: {own} -> {other} (they must not import each other)"
    return None


def test_infer_modules_belong_to_a_subpackage():
    problems = []
    for mod in modules().values():
        if _part(mod.name) == "infer" and mod.name != "pyro_vae.infer":
            sub = _infer_sub(mod.name)
            if sub not in INFER_ORDER:
                problems.append(
                    (mod, f"{mod.rel}: [layering] not in a subpackage of {sorted(INFER_ORDER)}")
                )
    _report("layering", problems)


def test_infer_subpackages_import_only_downwards():
    problems = []
    for mod in modules().values():
        if _part(mod.name) != "infer" or mod.name == "pyro_vae.infer":
            continue
        for imp in mod.imports:
            if _ours(imp.target) and _part(imp.target) == "infer":
                problem = _infer_problem(mod, imp.target)
                if problem:
                    problems.append((mod, f"{_where(mod, imp)}: [layering] {problem}"))
    _report("layering", problems)


def test_package_arrows():
    problems = []
    for mod in modules().values():
        part = _part(mod.name)
        if part is None:
            problems.append((mod, f"{mod.rel}: [layering] no package-level rule; add to ALLOWED"))
            continue
        allowed = ALLOWED[part]
        if allowed is EVERYTHING:
            continue
        for imp in mod.imports:
            if _ours(imp.target) and _part(imp.target) not in allowed:
                problems.append(
                    (
                        mod,
                        f"{_where(mod, imp)}: [layering] pyro_vae.{part} imports {imp.target}; "
                        f"it may import only pyro_vae.{{{', '.join(sorted(allowed))}}}",
                    )
                )
    _report("layering", problems)


# -- rule 3: no cycles in infer/ ----------------------------------------------------------------


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for root in sorted(graph):
        if root in state:
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _infer_graph() -> dict[str, set[str]]:
    infer = {name: mod for name, mod in modules().items() if _part(name) == "infer"}
    return {
        name: {
            imp.target
            for imp in mod.imports
            if not (imp.local or imp.type_only) and imp.target in infer
        }
        for name, mod in infer.items()
    }


def test_find_cycle_reports_the_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"a"}}) == ["a", "a"]


def test_no_import_cycle_in_infer():
    graph = _infer_graph()
    problems = []
    while (cycle := _find_cycle(graph)) is not None:
        mod = modules()[cycle[0]]
        problems.append((mod, f"{mod.rel}: [cycle] {' -> '.join(cycle)}"))
        graph[cycle[0]].discard(cycle[1])  # break it and look for the next one
    _report("cycle", problems)


# -- rule 4: function-local imports -------------------------------------------------------------


def test_no_function_local_imports_of_our_modules():
    problems = []
    for mod in modules().values():
        part = _part(mod.name)
        if part in LOCAL_IMPORTS_ALLOWED or part == "experiments":
            continue
        for imp in mod.imports:
            if imp.local and _ours(imp.target):
                problems.append(
                    (
                        mod,
                        f"{_where(mod, imp)}: [local-import] imports {imp.target} in a function "
                        "body; import it at module level (only cli* and runs* may defer)",
                    )
                )
    _report("local-import", problems)


# -- rule 5: sizes ------------------------------------------------------------------------------


def _docstring_gives_size_reason(tree: ast.Module) -> bool:
    doc = ast.get_docstring(tree) or ""
    return any(line.strip().startswith("Size:") for line in doc.splitlines())


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body without its docstring (see the module docstring, rule 5)."""
    body = node.body
    if ast.get_docstring(node, clean=False) is not None:
        body = body[1:]
    if not body:
        return 0
    return node.end_lineno - body[0].lineno + 1


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def _package_modules() -> list[Module]:
    return [mod for mod in modules().values() if _part(mod.name) != "experiments"]


def test_body_lines_exclude_the_docstring():
    tree = ast.parse('def f():\n    """Doc.\n\n    More.\n    """\n    a = 1\n\n    return a\n')
    assert _body_lines(tree.body[0]) == 3
    tree = ast.parse("def g():\n    return 1\n")
    assert _body_lines(tree.body[0]) == 1


def test_modules_are_short_or_say_why():
    problems = []
    for mod in _package_modules():
        if mod.lines > MAX_MODULE_LINES and not _docstring_gives_size_reason(mod.tree):
            problems.append(
                (
                    mod,
                    f"{mod.rel}: [size] {mod.lines} lines > {MAX_MODULE_LINES}; split it by job "
                    "or give the reason in a module-docstring line starting with 'Size:'",
                )
            )
    _report("size", problems)


def test_functions_are_short():
    problems = []
    for mod in _package_modules():
        for qualname, node in _functions(mod.tree):
            n = _body_lines(node)
            if n > MAX_FUNCTION_LINES:
                problems.append(
                    (
                        mod,
                        f"{mod.rel}:{node.lineno} {qualname}: [size] body of {n} lines > "
                        f"{MAX_FUNCTION_LINES} (docstring not counted); split it",
                    )
                )
    _report("size", problems)


# -- rule 6: private names stay private ---------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(mod: Module) -> dict[str, str]:
    """Local name -> our module, for ``import pyro_vae.x as m`` and ``from pyro_vae import x``."""
    aliases = {}
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name) and alias.asname:
                    aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(mod, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules():
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def test_private_names_are_not_imported():
    problems = []
    for mod in modules().values():
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ImportFrom):
                base = _resolve_from(mod, node)
                if not _ours(base):
                    continue
                for alias in node.names:
                    if _private(alias.name) and f"{base}.{alias.name}" not in modules():
                        problems.append(
                            (
                                mod,
                                f"{mod.rel}:{node.lineno}: [private] imports {alias.name} from "
                                f"{base}; make it public or move it",
                            )
                        )
        aliases = _module_aliases(mod)
        for node in ast.walk(mod.tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                problems.append(
                    (
                        mod,
                        f"{mod.rel}:{node.lineno}: [private] uses {aliases[node.value.id]}."
                        f"{node.attr}; make it public or move it",
                    )
                )
    _report("private", problems)


def _module_level_names(tree: ast.Module):
    """(name, line) of every function, class and assigned name at a module's top level."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name, node.lineno
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        yield name.id, node.lineno


def test_private_names_mean_one_thing():
    where: dict[str, list[tuple[Module, int]]] = {}
    for mod in _package_modules():
        for name, line in _module_level_names(mod.tree):
            if _private(name):
                where.setdefault(name, []).append((mod, line))
    problems = []
    for name, found in sorted(where.items()):
        files = sorted({mod.rel for mod, _ in found})
        if len(files) > 1:
            for mod, line in found:
                others = ", ".join(f for f in files if f != mod.rel)
                problems.append(
                    (
                        mod,
                        f"{mod.rel}:{line}: [private] {name} is also defined in {others}; "
                        "give each meaning its own name (or share one public helper)",
                    )
                )
    _report("private", problems)
