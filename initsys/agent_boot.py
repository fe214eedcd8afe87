"""The agent's process entry when PID 1 starts it (exec mode).

PID 1 starts this process at the very beginning of the boot, so that its
imports (trio, msgpack, the agent -- ~1 s of guest CPU under TCG) run on the
second vCPU while PID 1 sets up the root.  Then it blocks on the `go` pipe:
PID 1 writes one JSON object once the new root, the volumes and the network
are ready -- {"root", "env", "transport"} -- or closes the pipe without
writing when the agent is not wanted (`skip_guest_agent`), and we exit.
After `go`, agent.main.serve opens the transport, chroots into the new root,
listens and reports readiness on KINDLING_READY_FD (PROTOCOL.md §4); with
`"announce": false` in `go` it leaves the HYPEMAN-AGENT-READY line to PID 1,
which holds the control port (initsys/control.py).
"""

import json
import os
import sys


def main(argv):
    """Helper entry: --go-fd N (initsys/helpers.launch, deferred).  The ready fd and
    file come in KINDLING_READY_*."""
    import agent.main  # everything serve() needs, imported before `go`
    from initsys.helpers import read_all

    go = read_all(int(argv[1]))
    if not go:
        return 0  # not wanted
    order = json.loads(go)
    if os.environ.get("KINDLING_AGENT_FAULT") == "exit-before-ready":
        # fault injection for the gate's tests (kernel argument kindling_agent_fault=...)
        sys.stderr.write("kindling-agent: exiting before readiness (fault injection)\n")
        return 3
    ready_fd = agent.main._ready_fd_from_env()
    ready_file = os.environ.pop("KINDLING_READY_FILE", None) or None
    return agent.main.serve(order["transport"], ready_fd, ready_file=ready_file,
                            chroot=order["root"], base_env=order["env"],
                            announce=order.get("announce", True))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
