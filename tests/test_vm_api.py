"""docs/api.md's example program, run as written against a real TCG guest (one boot): the
Python API's create, wait, exec, exec_stream, copy in/out, cp, stat, logs (also following
until the VM stops), stop, delete and the volume operations."""

import ast
import subprocess
import sys

import pytest

from tests.vm import ROOT, env_for, private_home, qemu_pids_using

pytestmark = pytest.mark.vm

DOC = ROOT / "docs" / "api.md"


def example_program() -> str:
    """The fenced block between the api-example markers of docs/api.md."""
    text = DOC.read_text()
    block = text.split("<!-- api-example: begin -->")[1].split("<!-- api-example: end -->")[0]
    block = block.strip()
    assert block.startswith("```python\n") and block.endswith("\n```"), block[:40]
    return block[len("```python\n"):-len("```")]


def test_the_documented_example_runs_against_a_tcg_guest():
    with private_home("kapi") as home:
        env = env_for(home) | {"PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, "-c", example_program()], cwd=ROOT, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=900)
        assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
        lines = r.stdout.splitlines()
        assert "volumes: [('scratch', 16777216)]" in lines
        assert "exec: 3 b'hi from /tmp\\n' b'oops\\n'" in lines
        assert "exec_stream: 0 b'STREAMED\\n'" in lines
        assert "stat: file 22 0o640" in lines
        prefix = "stopped: Stopped followed: "
        followed = ast.literal_eval(next(l for l in lines if l.startswith(prefix))[len(prefix):])
        program = [line for line in followed if not line.startswith("[")]   # not the kernel's
        assert program == ["hello from the guest", "goodbye"]
        assert lines[-1] == "instances left: []"
        assert qemu_pids_using(home) == []
        assert not (home / "volumes" / "scratch.img").exists()
