"""PID 1: the boot, as a list of steps read top to bottom (`steps`).

Shape (after virtme-ng's init): strictly ordered basic setup, then the
independent stages concurrently, then the program, then power-off.  Every
stage prints a KINDLING-STAGE line (docs/protocol.md §4); any failure prints one
KINDLING-FATAL line naming the stage and powers off -- PID 1 never exits.
How the list runs (threads, trio) is initsys/steps.py; what each step does is
initsys/boot.py.
"""

import signal

from initsys import mounts, power, timeline
from initsys.failure import BootFailed, describe
from initsys.steps import MAIN, SETUP, TRIO, Step, run


def steps(b):
    """Every stage of the boot, in order, and where it runs (MAIN thread, the SETUP
    thread -- which overlaps `imports` -- or TRIO).  A tuple names stages that run
    concurrently or are measured together; `when` skips a step; line=False names a
    stage for FATAL lines without printing a KINDLING-STAGE line."""
    cold, warm = b.cold, b.checkpointing      # a template's boot: initsys/checkpoint.py
    return (
        Step(MAIN, "mounts", mounts.mount_basic),                      # /proc /sys /dev /run ...
        Step(MAIN, "agent-spawn", b.spawn_agent, when=b.agent_forks_early),  # then it imports alone
        Step(MAIN, "network-spawn", b.prestart_network, when=b.network_hinted),  # kindling_net=1
        # -- a template's boot: what is the same on every boot, then the checkpoint --
        Step(MAIN, "modules", b.load_modules_but_disks, when=warm),     # no block driver yet
        Step(MAIN, "ports", b.wait_for_agent_port, when=both(warm, b.agent_on_serial)),
        Step(MAIN, "control", b.open_control, when=both(warm, b.control_requested)),
        Step(MAIN, "imports", b.import_trio, when=warm),
        Step(MAIN, "agent-spawn", b.spawn_agent, when=both(warm, b.agent_forks_late)),
        Step(MAIN, "setup-thread", b.prestart_setup_thread, when=warm, line=False),  # idle until then
        Step(TRIO, "checkpoint", b.checkpoint, when=warm),   # trio starts; snapshotted; clones go on
        # -- every boot from here (a cold one does its modules, ports, control here) --
        Step(SETUP, "modules", b.load_modules),     # joins /init's thread (initsys/preload.py); a clone: the block driver
        Step(SETUP, "disks", b.wait_for_disks),
        Step(SETUP, "ports", b.wait_for_agent_port, when=both(cold, b.agent_on_serial)),
        Step(SETUP, "control", b.open_control, when=both(cold, b.control_requested)),  # before any program
        Step(SETUP, "rootfs", b.assemble_root),
        Step(SETUP, "config", b.read_config, when=cold),               # + strategy, the agent's fate
        Step(SETUP, "newroot", mounts.bind_into_newroot),
        Step(SETUP, "network", b.settle_network, when=cold, line=False),  # launch its helper now if it may
        Step(SETUP, ("kernel", "python"), b.time_kernel_and_python),
        Step(MAIN, "config", b.read_resumed_config, when=warm),        # overlaps the SETUP thread:
        Step(MAIN, "network", b.settle_network, when=warm, line=False),  # configured while disks probe
        Step(MAIN, "imports", b.import_trio, when=cold),                # overlaps the SETUP thread
        Step(MAIN, "agent-spawn", b.spawn_agent, when=both(cold, b.agent_forks_late)),  # shares the imports
        Step(TRIO, "setup-join", b.join_setup),
        Step(TRIO, ("volumes", "network"), b.volumes_and_network),     # concurrently (initsys/stages.py)
        Step(TRIO, "units", b.install_units, when=b.systemd_mode),
        Step(TRIO, "headers-spawn", b.spawn_headers, when=b.headers_before_program),  # baseline
        Step(TRIO, "headers-wait", b.wait_for_headers, when=b.headers_awaited),  # baseline only
        Step(TRIO, "agent", b.wait_for_agent, when=b.agent_gates_program),
        Step(TRIO, "program", b.run_program, when=b.exec_mode, line=False),  # prints program-start,
        # then (not baseline) headers-spawn: the worker never delays Running

        Step(MAIN, "systemd", b.switch_root, when=b.systemd_mode, line=False),  # never returns
    )


def both(*conditions):
    """A step's `when` that holds when every one of `conditions` does."""
    return lambda: all(condition() for condition in conditions)


def main(t0):
    from initsys.boot import Boot

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # forwarded to the program later
        boot = Boot(t0)
        boot.expect_control()  # markers are kept until the control port is open
        run(steps(boot), boot)
    except* BootFailed as failed:
        first = failed.exceptions[0]  # flat: every stage raises one BootFailed (steps.py)
        power.fatal(getattr(first, "stage", timeline.current()), str(first))
    except* BaseException as other:
        power.fatal(timeline.current(), describe(other.exceptions[0]))
    power.power_off()
