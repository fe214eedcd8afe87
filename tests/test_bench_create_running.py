"""bench/floor.py and bench/create_running.py (issue 7): the floor initrd's contents, and a
CI smoke run of the benchmark with one run per variant (figures, never asserted)."""

import json
import os
import stat
import subprocess
import sys

import pytest

from tests.newc import read_newc
from tests.vm import ROOT, qemu_pids_using, require_qemu

sys.path.insert(0, str(ROOT / "bench"))
import floor  # noqa: E402  (bench/floor.py)


def test_floor_initrd_is_a_plain_newc_with_a_one_line_shell_init():
    path = floor.floor_initrd()     # the build cache's busybox-static (a fresh cache would fetch it)
    assert floor.floor_initrd() == path      # cached
    entries = {e["name"]: e for e in read_newc(path.read_bytes())}  # uncompressed
    assert set(entries) == {"init", "bin", "bin/busybox", "bin/sh", "bin/date", "bin/sleep",
                            "dev", "dev/console"}
    init = entries["init"]["body"].decode()
    assert init.startswith("#!/bin/sh\n") and len(init.splitlines()) == 2
    assert "HYPEMAN-PROGRAM-START ts=$(date -u +%Y-%m-%dT%H:%M:%S).000000000Z mode=exec" in init
    assert init.rstrip().endswith("; exec /bin/sleep 3600")
    assert entries["init"]["mode"] & 0o111
    assert stat.S_ISCHR(entries["dev/console"]["mode"]) and entries["dev/console"]["rdev"] == (5, 1)
    assert entries["bin/sh"]["body"] == b"busybox"


@pytest.mark.vm
def test_create_running_benchmark_smoke_run(tmp_path):
    require_qemu()
    out = tmp_path / "cr.json"
    r = subprocess.run([sys.executable, "bench/create_running.py", "--runs", "1", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "baseline / default" in r.stdout and "default / floor" in r.stdout
    data = json.loads(out.read_text())
    assert set(data["variants"]) == {"baseline", "default", "floor"}
    assert all(len(v["per_run"]) == 1 for v in data["variants"].values())
    assert "headers-wait" in data["variants"]["baseline"]["per_run"][0]["stages"]
    home = data["kindling_home"]    # removed, and no VM of this run left behind
    assert not os.path.exists(home) and qemu_pids_using(home) == []


def test_the_template_variant_reports_its_ratio_build_and_restore():
    import create_running   # bench/create_running.py

    def run(wall, restore=None):
        return {"wall_s": wall, "time_to_running_s": wall - 1, "stages": {}, "restore_s": restore}
    results = {"floor": [run(10.0), run(12.0)], "template": [run(6.0, 1.0), run(8.0, 3.0)],
               "template_build": {"wall_s": 30.0, "build_seconds": 29.5, "checkpoint_seconds": 20.0,
                                  "vmstate_bytes": 100 << 20}}
    argv = create_running.create_argv("template", "n", "/floor")
    assert argv[-5:] == ["--template", create_running.TEMPLATE, "--", *create_running.PROGRAM]
    text, numbers = create_running.report(results, 2, ["x"])
    assert "template / floor    = 0.64x   (target <= 0.7x: met)" in text
    assert "built once in 29.5 s" in text and "restore (launch -> guest started) median 2.00 s" in text
    assert numbers["ratio_template_over_floor"] == pytest.approx(7.0 / 11.0)
    assert "template_build" not in results          # reported apart from the variants
