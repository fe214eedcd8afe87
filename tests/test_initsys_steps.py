"""The boot as a list of steps (initsys/main.py `steps`, run by initsys/steps.py),
its one timing mechanism (initsys/timeline.py `Stage`) and its one failure type
(initsys/failure.py), on the host: no VM, fake step actions."""

import os
import re
import threading
from pathlib import Path

import pytest
import trio

from initsys import failure, main, protocol, steps, timeline
from initsys.boot import Boot
from initsys.failure import BootFailed
from initsys.steps import MAIN, SETUP, TRIO, Step

DOCS = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


@pytest.fixture
def timeline_on_console(monkeypatch):
    """The kernel argument Kindling's host passes without a control port (--initrd)."""
    monkeypatch.setenv(timeline.CONSOLE_ARG, "1")


def stage_lines(text):
    return [protocol.parse_line(line).fields["name"] for line in text.splitlines()
            if line.startswith("KINDLING-STAGE")]


def test_stage_prints_its_line_names_the_thread_and_restores_the_outer():
    assert timeline.current() == "init"
    with timeline.Stage("outer"):
        with timeline.Stage("inner") as inner:
            assert timeline.current() == "inner"
        assert timeline.current() == "outer"
    assert timeline.current() == "init"
    assert inner.start <= inner.end


def test_stage_turns_an_error_into_bootfailed_naming_it(capfd, timeline_on_console):
    with pytest.raises(BootFailed) as caught:
        with timeline.Stage("rootfs"):
            with timeline.Stage("quiet", line=False):
                pass
            raise OSError("overlay: no such device")
    assert caught.value.stage == "rootfs"
    assert str(caught.value) == "overlay: no such device"
    assert stage_lines(capfd.readouterr().out) == []   # a failed stage prints no line; line=False none


def test_stage_keeps_an_inner_bootfailed_and_lets_cancellation_through():
    with pytest.raises(BootFailed) as caught:
        with timeline.Stage("outer"):
            with timeline.Stage("disks"):
                raise ValueError("x")
    assert caught.value.stage == "disks"
    with pytest.raises(KeyboardInterrupt):
        with timeline.Stage("outer"):
            raise KeyboardInterrupt


def test_stage_lines_stay_off_the_console_unless_asked(capfd, monkeypatch):
    """A hypeman host's console (no kindling_timeline=1): no stage line; the control
    port, which only Kindling's host reads, still gets it."""
    from initsys import control
    monkeypatch.delenv(timeline.CONSOLE_ARG, raising=False)
    sent = []
    monkeypatch.setattr(control, "write", sent.append)
    timeline.Stage("kernel", start=0.0).finish(1.5)
    assert capfd.readouterr().out == ""
    assert sent == ["KINDLING-STAGE name=kernel start=0.000000 end=1.500000"]
    monkeypatch.setenv(timeline.CONSOLE_ARG, "1")
    timeline.Stage("kernel", start=0.0).finish(1.5)
    assert stage_lines(capfd.readouterr().out) == ["kernel"]


def test_stage_lines_reach_the_console_until_the_control_port_is_open(capfd, monkeypatch):
    """Kindling's host (kindling_control=1): the stages before the port opens are on the
    console too (the early-boot watchdog's first sign of PID 1), then only on the port."""
    from initsys import control
    monkeypatch.delenv(timeline.CONSOLE_ARG, raising=False)
    monkeypatch.setattr(control, "_backlog", None)
    monkeypatch.setattr(control, "_fd", None)
    control.expect()
    timeline.Stage("mounts", start=0.0).finish(0.1)
    assert stage_lines(capfd.readouterr().out) == ["mounts"]
    r, w = os.pipe()
    control.attach(w)
    timeline.Stage("rootfs", start=0.2).finish(0.3)
    assert capfd.readouterr().out == ""
    os.close(w)
    with os.fdopen(r) as f:
        assert [line.split()[1] for line in f.read().splitlines()] == ["name=mounts", "name=rootfs"]
    monkeypatch.setattr(control, "_fd", None)


def test_stage_with_an_earlier_start_and_finish(capfd, timeline_on_console):
    timeline.Stage("kernel", start=0.0).finish(1.5)
    line = capfd.readouterr().out.strip()
    assert line.startswith("KINDLING-STAGE name=kernel start=0.000000 end=1.500000")


def test_describe():
    assert failure.describe(OSError("disk gone")) == "disk gone"
    assert failure.describe(protocol.ConfigError("workdir", "an absolute path", "x")).startswith(
        "config.json field 'workdir'")
    assert failure.describe(ValueError("bad")) == "ValueError: bad"
    assert failure.describe(RuntimeError()) == "RuntimeError"
    group = ExceptionGroup("g", [OSError("a"), ExceptionGroup("h", [KeyError("k")])])
    assert failure.describe(group) == "a; KeyError: 'k'"


class Recorder:
    """A fake Boot: records which step ran on which thread, and starts nothing."""

    def __init__(self):
        self.ran = []
        self.setup = None

    def act(self, name, error=None):
        def action():
            self.ran.append((name, threading.current_thread().name))
            if error:
                raise error
        return action

    def act_async(self, name):
        async def action():
            self.ran.append((name, "trio"))
        return action

    async def start_background(self, nursery):
        pass

    async def join(self):
        await trio.to_thread.run_sync(self.setup.join)
        if self.setup.error is not None:
            raise self.setup.error


def test_runner_runs_main_setup_and_trio_steps_in_order_and_skips(capfd, timeline_on_console):
    r = Recorder()
    gate = threading.Event()
    plan = (
        Step(MAIN, "a", r.act("a")),
        Step(SETUP, "s1", lambda: (gate.wait(10), r.act("s1")())),
        Step(SETUP, "s2", r.act("s2")),
        Step(MAIN, "b", lambda: (r.act("b")(), gate.set())),   # runs while the thread waits
        Step(TRIO, "join", r.join),
        Step(TRIO, "skipped", r.act_async("skipped"), when=lambda: False),
        Step(TRIO, "c", r.act_async("c")),
    )
    steps.run(plan, r)
    assert r.ran == [("a", "MainThread"), ("b", "MainThread"), ("s1", "setup"), ("s2", "setup"),
                     ("c", "trio")]
    assert stage_lines(capfd.readouterr().out) == ["a", "b", "s1", "s2", "join", "c"]


def test_a_wanted_trio_step_starts_the_one_trio_run_for_every_step_up_to_the_last(monkeypatch):
    """A template's boot: trio starts at its checkpoint (a TRIO step before the SETUP
    ones); the MAIN steps after it run inside that trio.run, those after the last TRIO
    step outside it (systemd mode's exec), and an unwanted TRIO step starts nothing."""
    r = Recorder()
    runs = []
    real_run = trio.run
    monkeypatch.setattr(trio, "run", lambda *args: (runs.append(args[0]), real_run(*args))[1])

    def where(name):
        def action():
            try:
                trio.lowlevel.current_trio_token()
                r.ran.append((name, "in trio"))
            except RuntimeError:
                r.ran.append((name, "outside"))
        return action

    plan = (
        Step(MAIN, "before", where("before")),
        Step(TRIO, "unwanted", r.act_async("unwanted"), when=lambda: False),
        Step(MAIN, "still-before", where("still-before")),
        Step(TRIO, "checkpoint", r.act_async("checkpoint")),
        Step(SETUP, "s", r.act("s")),
        Step(MAIN, "config", where("config")),
        Step(TRIO, "join", r.join),
        Step(MAIN, "systemd", where("systemd")),
    )
    steps.run(plan, r)
    assert len(runs) == 1
    assert ("s", "setup") in r.ran        # on the setup thread, beside `config`
    assert [entry for entry in r.ran if entry != ("s", "setup")] == [
        ("before", "outside"), ("still-before", "outside"), ("checkpoint", "trio"),
        ("config", "in trio"), ("systemd", "outside")]


def test_a_setup_failure_surfaces_at_the_join_naming_its_stage():
    r = Recorder()
    plan = (
        Step(SETUP, "disks", r.act("disks", OSError("disks not found within 10 s: config"))),
        Step(SETUP, "rootfs", r.act("rootfs")),
        Step(TRIO, "setup-join", r.join),
        Step(TRIO, "later", r.act_async("later")),
    )
    with pytest.raises(ExceptionGroup) as caught:   # trio.run's nursery: a flat group
        steps.run(plan, r)
    (failed,) = caught.value.exceptions
    assert isinstance(failed, BootFailed) and failed.stage == "disks"
    assert [name for name, _ in r.ran] == ["disks"]


def test_main_reports_the_failed_stage_in_one_fatal_line(monkeypatch):
    fatal = []

    class Stop(BaseException):
        pass

    def fake_fatal(stage, error):
        fatal.append((stage, error))
        raise Stop  # power.fatal never returns

    def failing_run(plan, boot):
        raise ExceptionGroup("trio", [BootFailed("config", OSError("no config.json"))])
    monkeypatch.setattr(main.power, "fatal", fake_fatal)
    monkeypatch.setattr(main, "run", failing_run)
    monkeypatch.setattr(main.signal, "signal", lambda *a: None)
    with pytest.raises(BaseExceptionGroup):
        main.main(0.0)
    assert fatal == [("config", "no config.json")]


def boot_steps():
    return main.steps(Boot(0.0, environ={}))


def test_the_steps_name_every_stage_in_order():
    names = []
    for step in boot_steps():
        names += list(step.name) if isinstance(step.name, tuple) else [step.name]
    assert names == ["mounts", "agent-spawn", "network-spawn",
                     "modules", "ports", "control", "imports", "agent-spawn", "setup-thread", "checkpoint",
                     "modules", "disks", "ports", "control", "rootfs",
                     "config", "newroot", "network", "kernel", "python", "config", "network", "imports", "agent-spawn", "setup-join",
                     "volumes", "network", "units", "headers-spawn", "headers-wait", "agent",
                     "program", "systemd"]
    where = {step.name: step.where for step in boot_steps()}
    assert where["imports"] == MAIN and where["modules"] == SETUP and where[("volumes", "network")] == TRIO


def wanted_until_disks(monkeypatch, environ):
    monkeypatch.setenv("kindling_control", "1")
    names = []
    for step in main.steps(Boot(0.0, environ=environ)):
        if step.name == "disks":
            return names
        if step.wanted():
            names.append(step.name)


def test_a_template_boot_stops_at_the_checkpoint_before_the_block_driver(monkeypatch):
    warm = wanted_until_disks(monkeypatch, {"kindling_checkpoint": "1", "kindling_agent": "serial"})
    assert warm == ["mounts", "modules", "ports", "control", "imports", "agent-spawn",
                    "setup-thread", "checkpoint", "modules"]
    # a clone's config (from the resume line) and network helper: on the main thread while
    # the setup thread probes the disks
    steps = main.steps(Boot(0.0, environ={"kindling_checkpoint": "1"}))
    order = [(s.where, s.name) for s in steps]
    config, network = order.index((MAIN, "config")), order.index((MAIN, "network"))
    assert config > order.index((SETUP, "modules")) and network == config + 1
    assert steps[config].wanted() and steps[network].wanted()
    assert not main.steps(Boot(0.0, environ={}))[config].wanted()     # a cold boot: in the setup thread
    cold = wanted_until_disks(monkeypatch, {"kindling_agent": "serial"})
    assert cold == ["mounts", "modules"]       # ports, control: after disks, in the setup thread


def test_every_stage_name_is_documented():
    table = DOCS.read_text().split("### `KINDLING-STAGE")[1].split("### systemd mode")[0]
    documented = set(re.findall(r"^\| `([a-z-]+)`(?:, `([a-z-]+)`)?", table, re.M))
    documented = {n for pair in documented for n in pair if n}
    for step in boot_steps():
        for name in step.name if isinstance(step.name, tuple) else (step.name,):
            assert name in documented, name


class FakeAgent:
    def __init__(self):
        self.fate = "kept"

    def kill(self):
        self.fate = "killed"

    def cancel(self):
        self.fate = "cancelled"


def read_config(monkeypatch, config, agent, environ=None):
    from initsys import config as config_mod
    monkeypatch.setattr(config_mod, "load", lambda device: protocol.validate_config(
        {"entrypoint": ["/sbin/init"], **config}))
    b = Boot(0.0, environ=environ or {})
    b.agent = agent
    b._disks = {"config": "/dev/vdc"}
    b.read_config()
    return b


@pytest.mark.parametrize("config, fate", [
    ({}, "kept"), ({"init_mode": "systemd"}, "killed"), ({"skip_guest_agent": True}, "cancelled"),
])
def test_the_agent_is_settled_once_config_and_agent_are_known(monkeypatch, config, fate):
    agent = FakeAgent()
    b = read_config(monkeypatch, config, agent)
    assert agent.fate == "kept"  # the agent may be forked after the config: setup-join settles it
    b.settle_agent()
    assert agent.fate == fate
    assert b.agent_gates_program() is (fate == "kept")


def test_the_config_step_refuses_agent_off_without_skip_guest_agent(monkeypatch):
    with pytest.raises(OSError, match="kindling_agent=off"):
        read_config(monkeypatch, {}, None, {"kindling_agent": "off"})
    assert read_config(monkeypatch, {"skip_guest_agent": True}, None).strategy == "concurrent"


@pytest.mark.parametrize("strategy, volume_path, early", [
    ("concurrent", "/data", True), ("concurrent", "/etc/app", False),
    ("sequential", "/data", False), ("baseline", "/data", False),
])
def test_the_network_helper_starts_early_only_when_it_waits_for_nothing(monkeypatch, strategy, volume_path, early):
    net = {"network_enabled": True, "guest_ip": "10.0.0.2", "guest_cidr": 24, "boot_strategy": strategy,
           "volume_mounts": [{"device": "/dev/vdd", "path": volume_path}]}
    b = read_config(monkeypatch, net, FakeAgent())
    launched = []
    from initsys import network_helper
    monkeypatch.setattr(network_helper.NetworkHelper, "launch", lambda self: launched.append(self.cfg))
    b.settle_network()
    assert bool(launched) is early


def test_every_kernel_argument_is_documented():
    """Each argument of the host's base command line, and each `kindling_*` argument the
    host passes or the guest reads, appears in docs/protocol.md §1."""
    from host_shim import qemu

    section = DOCS.read_text().split("## 1. Disks and kernel command line")[1].split("## 2.")[0]
    root = DOCS.parent.parent
    sources = [*root.glob("initsys/*.py"), root / "initsys" / "init", root / "host_shim" / "prepare.py",
               root / "host_shim" / "qemu.py"]
    ours = {m for p in sources for m in re.findall(r"""["'](kindling_[a-z_]+)(?:=|["'])""", p.read_text())}
    assert {"kindling_agent", "kindling_net", "kindling_strategy", "kindling_importtime"} <= ours
    for arg in sorted(ours) + [a.split("=")[0] for a in qemu.BASE_CMDLINE] + ["tsc_early_khz"]:
        assert f"`{arg}" in section, arg


@pytest.mark.parametrize("strategy, tail", [
    ("concurrent", [("volumes", "network"), "program"]),  # inside `program`, after PROGRAM-START
    ("baseline", ["headers-spawn", "headers-wait", "program"]),  # installed first
])
def test_the_headers_worker_starts_after_the_program_unless_baseline(strategy, tail, monkeypatch):
    from initsys import headers_launch
    monkeypatch.setattr(headers_launch, "wanted", lambda cfg: True)   # the initrd ships headers
    b = Boot(0.0, environ={})
    b.cfg = protocol.validate_config({"entrypoint": ["/bin/true"]})
    b.strategy = strategy
    b._headers = object()           # spawned (for headers-wait's condition)
    trio_steps = [s.name for s in main.steps(b) if s.where == TRIO and s.wanted()]
    assert trio_steps[-len(tail):] == tail


def test_a_setup_thread_started_before_its_steps_runs_them_when_given():
    """A template's boot starts the setup thread before the checkpoint; it waits idle."""
    b = Boot(0.0, environ={})
    b.prestart_setup_thread()
    started = b.setup
    ran = []
    assert started.is_alive() and not ran
    steps.run([Step(SETUP, "disks", lambda: ran.append(threading.current_thread()))], b)
    b.setup.join(timeout=30)
    assert b.setup is started and ran == [started]       # that thread, not a new one
