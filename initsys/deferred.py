"""Modules that `import trio` drags in but PID 1 never uses, imported only on first use.

trio's package imports its TLS and DTLS layers (`trio._ssl`, `trio._dtls`,
`trio._highlevel_ssl_helpers`), which import `ssl` and `hmac` at the top: that
loads libssl and libcrypto (`_ssl`, `_hashlib`) and runs their module code --
about a tenth of `import trio` in the guest's import profile
(`kindling_importtime=1`), on the boot's critical path.  trio only touches
these modules' attributes inside functions (TLS streams, DTLS cookies), which
PID 1 never calls.

So PID 1 puts a stub in `sys.modules` for each before `import trio`; the first
attribute access imports the real module and the stub takes over its
namespace.  Alternatives weighed: importlib.util.LazyLoader loads the module as
soon as `import ssl` finds it in sys.modules (the import system reads
`__spec__`), so it saves nothing here; trimming ssl from the initrd would break
trio's import.  Only for PID 1, which is never chrooted while it imports (the
agent is, and a late import would then find no stdlib).
"""

import importlib
import sys
import threading
import types

UNUSED_BY_PID1 = ("ssl", "hmac")
_lock = threading.Lock()


class Deferred(types.ModuleType):
    """Stands in for a module until one of its attributes is needed."""

    def __getattr__(self, attr):
        with _lock:
            real = sys.modules.get(self.__name__)
            if real is self:
                del sys.modules[self.__name__]
                try:
                    real = importlib.import_module(self.__name__)
                except BaseException:
                    sys.modules[self.__name__] = self
                    raise
            self.__dict__.update(real.__dict__)  # later lookups skip __getattr__
        return getattr(real, attr)


def defer(names=UNUSED_BY_PID1):
    for name in names:
        if name not in sys.modules:
            stub = Deferred(name)
            stub.__spec__ = None  # the import system then takes it as loaded
            sys.modules[name] = stub
