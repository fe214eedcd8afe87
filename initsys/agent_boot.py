"""The agent's process when PID 1 starts it (exec mode): a child forked from PID 1.

PID 1 forks it (initsys/zygote.py) with everything agent.main needs already
imported, so the agent shares PID 1's interpreter pages instead of importing
trio again.  It blocks on the `go` pipe: PID 1 writes one JSON object once the
new root, the volumes and the network are ready -- {"root", "env", "transport",
"announce"} -- or closes the pipe without writing when the agent is not wanted
(`skip_guest_agent`, systemd mode), and it exits.  After `go`,
agent.main.serve opens the transport, chroots into the new root, listens and
reports readiness on the inherited ready pipe (PROTOCOL.md §4); with
`"announce": false` it leaves the HYPEMAN-AGENT-READY line to PID 1, which
holds the control port (initsys/control.py).

systemd mode runs the same agent.main.serve from a unit (`python3 -m
agent.main`, systemd_units): the two paths differ only in how the process
starts and gets its transport, ready fd and environment.
"""

import json
import sys


def run(go_fd, ready_fd, ready_file, fault=None):
    """The forked child's work (initsys/agent_gate.py); returns its exit status."""
    import agent.main  # imported by PID 1 before the fork: a no-op then (see zygote.py)
    from initsys.helpers import read_all

    go = read_all(go_fd)
    if not go:
        return 0  # not wanted
    order = json.loads(go)
    if fault == "exit-before-ready":
        # fault injection for the gate's tests (kernel argument kindling_agent_fault=...)
        sys.stderr.write("kindling-agent: exiting before readiness (fault injection)\n")
        sys.stderr.flush()
        return 3
    return agent.main.serve(order["transport"], ready_fd, ready_file=ready_file,
                            chroot=order["root"], base_env=order["env"],
                            announce=order.get("announce", True))
