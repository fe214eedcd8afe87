"""CI smoke run of bench/agent_vs_qga.py: one iteration of everything, in a real TCG VM.

It must not fail and must report every figure; the timings themselves are not asserted
(the machines are shared and noisy)."""

import json
import subprocess
import sys

import pytest

from tests.vm import ROOT, require_qemu

pytestmark = pytest.mark.vm


def test_agent_vs_qga_smoke(tmp_path):
    require_qemu()
    out = tmp_path / "result.json"
    r = subprocess.run([sys.executable, "bench/agent_vs_qga.py", "--runs", "1", "--copy-runs", "1",
                        "--copy-mib", "1", "--floor-spawns", "10", "--json", str(out)],
                       cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "`true` round trip, connected (ms)" in r.stdout and "write + read (MiB/s)" in r.stdout
    result = json.loads(out.read_text())
    for kind in ("true_connected", "true_fresh"):
        for who in ("ours", "qga"):
            assert len(result[kind][who]["raw"]) == 1 and result[kind][who]["median"] > 0
    for who in ("ours", "qga"):
        assert set(result["copy_mib_s"][who]) == {"in", "out", "both"}
    assert len(result["spawn_floor"]["raw"]) == 3 and result["spawn_floor"]["median"] > 0
    assert "spawn floor" in r.stdout
    assert result["qga_version"] and result["qga_port"].startswith("/dev/vport")
