"""Kindling's host side: the `kindling` CLI and its Python API.

    from host_shim import Kindling
    k = Kindling()
    vm = k.create(["echo", "hello"], accel="tcg")

See docs/api.md and host_shim/api.py.
"""

from .agent_client import AgentError, CopyResult, ExecResult, StatResult
from .api import Kindling, RunResult
from .info import InstanceInfo
from .errors import KindlingError, NoSuchInstance
from .lifecycle import WaitTimeout
from .state import NotRunning, State
from .volumes import VolumeInfo

__all__ = ["Kindling", "InstanceInfo", "State", "KindlingError", "NoSuchInstance", "NotRunning",
           "WaitTimeout", "AgentError", "ExecResult", "StatResult", "CopyResult", "RunResult",
           "VolumeInfo"]
