"""The package's import graph, read from the source files: no cycle, every module importable.

Imports inside functions (lazy imports) count as edges: a cycle through a lazy import still
ties two modules together. ``from infer_jax import x`` resolves to the module ``infer_jax.x``
when it exists (else to the package ``infer_jax``); ``from infer_jax.a import b`` likewise;
relative imports are resolved against the importing module's package.
"""

import ast
import importlib
import pathlib

import pytest

PACKAGE = "infer_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules) -> str | None:
  """The longest prefix of ``name`` that is a module of the package."""
  parts = name.split(".")
  while parts:
    candidate = ".".join(parts)
    if candidate in modules:
      return candidate
    parts.pop()
  return None


def _imports(module: str, path: pathlib.Path, modules) -> set[str]:
  """Modules of the package that ``module`` imports anywhere in its source."""
  tree = ast.parse(path.read_text(), filename=str(path))
  is_package = path.name == "__init__.py"
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] == PACKAGE:
          out.add(_resolve(alias.name, modules))
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
      else:
        target = node.module or ""
      if target.split(".")[0] != PACKAGE:
        continue
      for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.add(sub if sub in modules else _resolve(target, modules))
  out.discard(None)
  out.discard(module)
  return out


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(m, p, modules) for m, p in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
  state: dict[str, int] = {}  # 1: on the current path, 2: finished
  for start in sorted(graph):
    if state.get(start):
      continue
    path = [start]
    stack = [iter(sorted(graph[start]))]
    state[start] = 1
    while stack:
      nxt = next(stack[-1], None)
      if nxt is None:
        state[path.pop()] = 2
        stack.pop()
        continue
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if not state.get(nxt):
        state[nxt] = 1
        path.append(nxt)
        stack.append(iter(sorted(graph[nxt])))
  return None


def test_the_graph_sees_module_level_lazy_and_package_imports():
  graph = _graph()
  # Independent expectations, from reading the sources: a module-level import of a module,
  # a lazy import inside a function, and an import of a package's __init__.
  assert "infer_jax.runtime.distributed" in graph["infer_jax.runtime.cli"]
  assert "infer_jax.convert" in graph["infer_jax.export"]  # lazy: only for --torch
  assert "infer_jax.models" in graph["infer_jax.student"]
  assert "infer_jax.models.resnet" in graph["infer_jax.models"]


def test_cycle_finder_reports_the_path():
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_package_has_no_import_cycle():
  cycle = _find_cycle(_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_module_imports(module):
  importlib.import_module(module)


def test_every_module_is_reachable_from_an_entry_point_or_the_package():
  """No orphan modules: each is imported by another module of the package or is an entry
  point (``python -m infer_jax.<stage>``) or a package ``__init__``."""
  graph = _graph()
  entry_points = {
    f"{PACKAGE}.{n}" for n in ("squeeze", "evaluate", "distill", "report", "convert", "export")
  }
  roots = entry_points | {m for m, p in _modules().items() if p.name == "__init__.py"}
  seen, todo = set(), list(roots)
  while todo:
    m = todo.pop()
    if m in seen:
      continue
    seen.add(m)
    todo.extend(graph[m])
  assert set(graph) - seen == set()
