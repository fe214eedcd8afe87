"""initsys/preload.py: the module closure loaded in a thread /init starts before it
imports anything else, and the `modules` step that joins it (no VM: kmod faked)."""

import threading

import pytest

from initsys import kmod, preload, protocol, timeline
from initsys.boot import Boot
from initsys.failure import BootFailed


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(preload, "_loading", None)
    monkeypatch.setenv(timeline.CONSOLE_ARG, "1")


def test_the_load_runs_in_the_thread_init_started(fresh, monkeypatch):
    loaded_in = []
    monkeypatch.setattr(kmod, "load_all", lambda: loaded_in.append(threading.current_thread().name))
    preload.start(environ={})
    began, ended = preload.join()
    assert loaded_in == ["modules"] and began <= ended


def test_the_modules_steps_line_carries_the_threads_start_and_end(fresh, monkeypatch, capfd):
    """The step only joins: its KINDLING-STAGE line says when the thread loaded (here a
    finished thread that ran from 1.0 to 2.0 s), not when the step waited."""
    done = preload._Loading()
    done.began, done.ended = 1.0, 2.0
    monkeypatch.setattr(preload, "_loading", done)
    monkeypatch.setattr(done, "join", lambda: None)
    monkeypatch.setattr(kmod, "load_all", lambda: pytest.fail("loaded again"))
    with timeline.Stage("modules"):
        Boot(0.0, environ={}).load_modules()
    line = [protocol.parse_line(x) for x in capfd.readouterr().out.splitlines()
            if x.startswith("KINDLING-STAGE")][-1]
    assert (line.fields["name"], float(line.fields["start"]), float(line.fields["end"])) == \
        ("modules", 1.0, 2.0)


def test_a_failed_load_fails_the_boot_at_modules(fresh, monkeypatch):
    def load_all():
        raise OSError(2, "loading kernel module /x/virtio_blk.ko: No such file or directory")
    monkeypatch.setattr(kmod, "load_all", load_all)
    preload.start(environ={})
    with pytest.raises(BootFailed, match="virtio_blk.ko") as failed:
        with timeline.Stage("modules"):
            Boot(0.0, environ={}).load_modules()
    assert failed.value.stage == "modules"


def test_nothing_is_started_for_a_template_and_a_step_without_it_loads_itself(fresh, monkeypatch):
    calls = []
    monkeypatch.setattr(kmod, "load_all", lambda: calls.append(threading.current_thread().name))
    preload.start(environ={"kindling_checkpoint": "1"})
    assert preload.join() is None and calls == []
    with timeline.Stage("modules"):
        Boot(0.0, environ={}).load_modules()
    assert calls == [threading.current_thread().name]
