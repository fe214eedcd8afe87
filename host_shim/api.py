"""The Python API: the operations of the `kindling` CLI, for synchronous callers.

    from host_shim import Kindling
    k = Kindling()                                   # $KINDLING_HOME, or pass home=
    vm = k.create(["sh", "-c", "echo hi; sleep 60"], name="demo", accel="tcg")
    vm = k.wait("demo", "running", timeout=120)      # vm.time_to_running
    k.stop("demo"); k.delete("demo")

Each method runs its own trio event loop; code that already runs under trio
awaits the functions of host_shim.lifecycle instead (same names, async).
Errors are KindlingError subclasses with a message a user can act on.
"""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path

import trio

from . import lifecycle, metadata, options
from .info import InstanceInfo
from .instance import Instance, kindling_home
from .state import State, require_running

__all__ = ["InstanceInfo", "Kindling"]


class Kindling:
    """The Kindling operations on one data directory ($KINDLING_HOME by default).

    An instance (`ref`) is named by its name, its id, or a unique prefix of its id.
    """

    def __init__(self, home: str | Path | None = None):
        self.home = Path(home).absolute() if home is not None else kindling_home()

    def _resolve(self, ref: str) -> Instance:
        return metadata.resolve(self.home, ref)[0]

    def create(self, command=(), **opts) -> InstanceInfo:
        """Create an instance running `command` and boot it.  Returns while the guest
        is still Initializing; `wait(ref, "running")` for more.  The keywords are
        create's options (host_shim/options.py; sizes as 512M/1G or a number):

"""
        values = options.make(options.CreateOptions, dict(opts, command=command), self.home)
        return InstanceInfo.of(*trio.run(partial(lifecycle.create, values, self.home)))

    create.__signature__ = options.signature(
        "create", first=(inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),))
    create.__doc__ += options.api_doc("create")

    def start(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(lifecycle.start, instance))

    def stop(self, ref: str, timeout: float = lifecycle.DEFAULT_STOP_TIMEOUT) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(partial(lifecycle.stop, instance,
                                                          timeout=timeout)))

    def delete(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(lifecycle.delete, instance))

    def list(self) -> list[InstanceInfo]:
        return [InstanceInfo.of(i, m)
                for i, m in trio.run(lifecycle.list_instances, self.home)]

    def inspect(self, ref: str) -> InstanceInfo:
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(lifecycle.observe, instance))

    def wait(self, ref: str, state: str | State = State.RUNNING,
             timeout: float | None = None) -> InstanceInfo:
        """Block until the instance is Running (or has been, this boot) or Stopped."""
        target = State(str(state).capitalize()) if not isinstance(state, State) else state
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(partial(lifecycle.wait, instance, target,
                                                          timeout=timeout)))

    def logs(self, ref: str, source: str = "app") -> list[str]:
        """The log lines so far (all boots); `app` has the sentinel lines filtered out."""
        instance = self._resolve(ref)
        lines: list[str] = []
        trio.run(partial(lifecycle.logs, instance, lines.append, source=source))
        return lines

    def analyze(self, ref: str) -> InstanceInfo:
        """The instance with its complete boot timeline (`.timeline`, `.time_to_running`)."""
        instance = self._resolve(ref)
        return InstanceInfo.of(instance, trio.run(lifecycle.analyze, instance))

    def require_running(self, ref: str, operation: str = "this operation") -> InstanceInfo:
        """The guard for operations that need a running guest (exec, copy, stat): the
        instance if it is Running, else NotRunning (a KindlingError) saying what to do."""
        info = self.inspect(ref)
        require_running(ref, info.state, operation)
        return info
