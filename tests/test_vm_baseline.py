"""The `baseline` boot strategy in a real TCG VM (issue 7): the benchmarks' "before".

`--kernel-arg kindling_strategy=baseline` with a network and a volume: the
network stage ends before the volumes stage starts, PID 1 waits for the
kernel-headers worker (stage `headers-wait`) so HEADERS-READY comes before
PROGRAM-START, and the instance still reaches Running (agent ready file polled).
"""

import json

import pytest

from host_shim.timeline import Timeline
from initsys import protocol

from tests.test_vm_headers import HEADERS_TIMEOUT, STATUS, markers, ts
from tests.vm import kindling, private_home

pytestmark = pytest.mark.vm


def test_baseline_boot_installs_headers_before_the_program_and_runs_stages_in_turn():
    with private_home("kbl-") as home:
        kindling(home, "volume", "create", "vol", "--size", "16M")
        kindling(home, "create", "--name", "bl", "--net", "--volume", "vol:/data",
                 "--kernel-arg", "kindling_strategy=baseline", "--", "sleep", "3600")
        try:
            kindling(home, "wait", "bl", "--for", "running", "--timeout", str(HEADERS_TIMEOUT),
                     timeout=HEADERS_TIMEOUT + 60)
            m = markers(home, "bl")
            assert protocol.HEADERS_FAILED not in m
            assert ts(m[protocol.HEADERS_START]) < ts(m[protocol.HEADERS_READY]) \
                < ts(m[protocol.PROGRAM_START])
            assert protocol.AGENT_READY in m
            # through the agent: the headers are in place and the status is final at Running
            status = kindling(home, "exec", "bl", "--", "cat", STATUS).stdout
            assert status == "ready\n"
            info = json.loads(kindling(home, "inspect", "--json", "bl").stdout)
            with open(f"{info['dir']}/logs/control.log", errors="replace") as f:  # not on the console
                s = {st.name: (st.start, st.end) for st in Timeline.from_console(f).stages}
            assert s["network"][1] <= s["volumes"][0], s           # network first, in turn
            assert s["headers-spawn"][0] <= s["headers-wait"][0]
            assert s["headers-wait"][1] <= s["agent"][0] <= s["program-start"][0], s
        finally:
            kindling(home, "delete", "bl", check=False)
