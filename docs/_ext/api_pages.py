"""Generate one API page per public module of pyro_vae, at the start of every build.

Every module found by walking the packages gets a page (a new module needs no edit here): a
table of its public names (``__all__``, else the public functions, classes and assigned constants
it defines), then each name rendered by autodoc where it is defined. A name a module only
re-exports is listed in its table with a link to the page that defines it, so each object is
described once. The pages go to ``docs/api/`` (generated, not kept in git).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer

PACKAGE = "pyro_vae"
TOP = ("pyro_vae", "pyro_vae.infer", "pyro_vae.models", "pyro_vae.diagnostics")
"""The packages the reference opens with; every other module follows, by name."""


def public_modules() -> list[str]:
    """Every importable module of the package whose dotted name has no ``_``-prefixed part."""
    root = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(root.__path__, prefix=PACKAGE + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def assigns(module: types.ModuleType, name: str) -> bool:
    """Whether ``module``'s own source assigns ``name`` at top level (a constant it defines)."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return re.search(rf"^{re.escape(name)}\s*(:[^=\n]*)?=", source, re.MULTILINE) is not None


def home(name: str, obj, module: types.ModuleType, modules: list[str]) -> str:
    """The module that defines ``obj`` (known to ``module`` as ``name``)."""
    owner = getattr(obj, "__module__", None)
    if isinstance(obj, (type, types.FunctionType)) and owner:
        return owner
    if assigns(module, name):
        return module.__name__
    for other in modules:
        candidate = importlib.import_module(other)
        if getattr(candidate, name, None) is obj and assigns(candidate, name):
            return other
    return module.__name__


def public_names(module: types.ModuleType) -> list[str]:
    """``__all__``, else the public functions, classes and constants the module defines."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    names = []
    for name, obj in vars(module).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        if isinstance(obj, (type, types.FunctionType)):
            if obj.__module__ == module.__name__:
                names.append(name)
        elif assigns(module, name):
            names.append(name)
    return names


def page(module_name: str, modules: list[str]) -> str:
    """The reStructuredText of one module's page."""
    module = importlib.import_module(module_name)
    rows, constants, own = [], [], []
    for name in public_names(module):
        obj = getattr(module, name)
        where = home(name, obj, module, modules)
        # a constant's summary would be its type's docstring (int's, dict's): linked, not tabled
        is_code = isinstance(obj, (type, types.FunctionType))
        (rows if is_code else constants).append(f"{where}.{name}")
        if where == module_name:
            own.append(name)
    lines = [module_name, "=" * len(module_name), ""]
    if rows:
        lines += [".. autosummary::", "   :nosignatures:", ""]
        lines += [f"   ~{row}" for row in rows] + [""]
    if constants:
        lines += ["Constants: " + ", ".join(f":data:`~{c}`" for c in constants), ""]
    lines += [f".. automodule:: {module_name}", "   :undoc-members:"]
    own_code = [name for name in own if f"{module_name}.{name}" in rows]
    if own_code:
        lines.append(f"   :members: {', '.join(own_code)}")
    # constants one by one: automodule's :members: leaves out those without a doc comment, and
    # autodata would give those the docstring of their type (int's, dict's): their value instead
    documented = {key[1] for key in ModuleAnalyzer.for_module(module_name).find_attr_docs()}
    for name in own:
        if name in documented:
            lines += ["", f".. autodata:: {module_name}.{name}"]
        elif name not in own_code:
            value = " ".join(repr(getattr(module, name)).split())
            lines += ["", f".. py:data:: {name}", f"   :module: {module_name}"]
            lines += [f"   :value: {value}"]
    return "\n".join(lines) + "\n"


def write_pages(app) -> None:
    """Write ``docs/api/<module>.rst`` for every public module and the reference's index."""
    out = Path(app.srcdir) / "api"
    out.mkdir(exist_ok=True)
    modules = public_modules()
    ordered = [m for m in TOP if m in modules] + [m for m in modules if m not in TOP]
    pages = {f"{name}.rst": page(name, modules) for name in ordered}
    title = "API reference"
    index = [
        title,
        "=" * len(title),
        "",
        "One page per public module, generated from the docstrings at each build.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ] + [f"   {name}" for name in ordered]
    pages["index.rst"] = "\n".join(index) + "\n"
    for stale in out.glob("*.rst"):
        if stale.name not in pages:
            stale.unlink()
    # a page is rewritten only when its text changed: an unchanged file keeps its time, so
    # Sphinx does not read it again in a folder built before (a local rebuild stays quick)
    for name, text in pages.items():
        if not (out / name).is_file() or (out / name).read_text() != text:
            (out / name).write_text(text)


def setup(app):
    """Register the page writer to run before Sphinx reads the sources."""
    app.connect("builder-inited", write_pages)
    return {"parallel_read_safe": True, "version": "1"}
