"""tests/structure_check.py over the real tree (initsys must be clean; host_shim's
functions too), and over a tiny synthetic tree, to prove the checker can fail."""

import subprocess
import sys
import textwrap
from pathlib import Path

from tests import structure_check

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "structure_check.py"


def test_initsys_has_no_import_cycle_and_no_long_function():
    assert structure_check.violations(cycle_dirs=[ROOT / "initsys"], long_dirs=[ROOT / "initsys"]) == []


def test_host_shim_has_no_function_over_60_lines():
    assert structure_check.violations(long_dirs=[ROOT / "host_shim"]) == []


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def synthetic(tmp_path, body_lines):
    pkg = tmp_path / "pkg"
    write(pkg / "__init__.py", "")
    write(pkg / "a.py", "from pkg import b\n")                        # module level
    write(pkg / "b.py", "def f():\n    from . import a\n    return a\n")  # function level, relative
    write(pkg / "c.py", "import pkg.a\nimport os\n")                  # depends, no cycle
    body = "".join(f"    x{i} = {i}\n" for i in range(body_lines - 2))
    write(pkg / "long.py", f"def long():\n{body}    return 0\n")
    return pkg


def test_the_checker_finds_a_cycle_and_a_long_function(tmp_path):
    pkg = synthetic(tmp_path, body_lines=61)
    r = subprocess.run([sys.executable, str(SCRIPT), "--cycles", str(pkg), "--long", str(pkg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{pkg}: import cycle among pkg.a, pkg.b",
        f"{pkg / 'long.py'}:1: function long is 61 lines (limit 60)",
    ]


def test_the_checker_passes_60_lines_and_a_tree_without_cycles(tmp_path):
    pkg = synthetic(tmp_path, body_lines=60)
    (pkg / "b.py").write_text("def f():\n    return 1\n")
    r = subprocess.run([sys.executable, str(SCRIPT), "--cycles", str(pkg), "--long", str(pkg)],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "")


def test_the_import_graph_resolves_module_package_and_relative_imports(tmp_path):
    pkg = synthetic(tmp_path, body_lines=3)
    write(pkg / "d.py", "from pkg import VALUE\nfrom .a import thing\n")
    graph = structure_check.import_graph(pkg)
    assert graph["pkg.a"] == ["pkg.b"]
    assert graph["pkg.b"] == ["pkg.a"]
    assert graph["pkg.c"] == ["pkg.a"]
    assert graph["pkg.d"] == ["pkg", "pkg.a"]
