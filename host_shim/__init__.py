"""Kindling's host side: the `kindling` CLI and its Python API.

    from host_shim import Kindling
    k = Kindling()
    vm = k.create(["echo", "hello"], accel="tcg")

See README.md ("Python API") and host_shim/api.py.
"""

from .api import Kindling
from .info import InstanceInfo
from .errors import KindlingError, NoSuchInstance
from .lifecycle import WaitTimeout
from .state import NotRunning, State

__all__ = ["Kindling", "InstanceInfo", "State", "KindlingError", "NoSuchInstance", "NotRunning",
           "WaitTimeout"]
