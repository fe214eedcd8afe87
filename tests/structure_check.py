"""Structure check anyone can run: no import cycle inside a package, no function
over 60 lines.

    python tests/structure_check.py                 # cycles in initsys/; long functions in initsys/, host_shim/
    python tests/structure_check.py --cycles P ...  --long D ...

Exit 0 when clean, 1 with one line per violation.  Only `ast`: nothing is imported.

Decisions:
- An import counts wherever it is written -- at module level or inside a
  function.  A function-level import does not fail at import time, but two
  modules that each need the other are still one tangled unit (the cycle the
  issue named, main <-> stages <-> network over `describe`, was all
  function-level imports).  `if TYPE_CHECKING:` imports count too.
- A module `p.m` depends on `p.m2` for `import p.m2`, `from p import m2` (m2 a
  module) and `from p.m2 import x`; on the package `p` for `from p import x`
  (x not a module); relative imports are resolved.  Only modules inside the
  checked package count.
- A function's length is from its `def` line to its last line, docstring and
  comments included, decorators not; a nested function counts in its parent too.
"""

import argparse
import ast
import sys
from pathlib import Path

MAX_LINES = 60
ROOT = Path(__file__).resolve().parent.parent


def python_files(directory):
    return sorted(p for p in Path(directory).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path, package_dir):
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node, current, is_package, modules):
    """Module names inside `modules` that one Import/ImportFrom node depends on."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    base = node.module or ""
    if node.level:
        anchor = current.split(".")
        anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        if sub in modules:
            found.append(sub)
        elif base in modules:
            found.append(base)
    return found


def import_graph(package_dir):
    package_dir = Path(package_dir).resolve()
    files = {module_name(p, package_dir): p for p in python_files(package_dir)}
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_imported(node, name, is_package, files))
        edges.discard(name)
        graph[name] = sorted(edges)
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def long_functions(directory, limit=MAX_LINES):
    """[(path, line, name, length)] of every function longer than `limit` lines."""
    found = []
    for path in python_files(directory):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append((path, node.lineno, node.name, length))
    return sorted(found)


def violations(cycle_dirs=(), long_dirs=(), limit=MAX_LINES):
    lines = []
    for d in cycle_dirs:
        for component in cycles(import_graph(d)):
            lines.append(f"{d}: import cycle among {', '.join(component)}")
    for d in long_dirs:
        for path, line, name, length in long_functions(d, limit):
            lines.append(f"{path}:{line}: function {name} is {length} lines (limit {limit})")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", nargs="*", metavar="PACKAGE_DIR",
                        help="packages to check for import cycles [initsys]")
    parser.add_argument("--long", nargs="*", metavar="DIR",
                        help=f"directories to check for functions over {MAX_LINES} lines [initsys host_shim]")
    args = parser.parse_args(argv)
    if args.cycles is None and args.long is None:
        args.cycles, args.long = [ROOT / "initsys"], [ROOT / "initsys", ROOT / "host_shim"]
    found = violations(args.cycles or (), args.long or ())
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
