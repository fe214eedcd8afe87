"""Loading the kernel-module closure shipped in the initrd.

image_build resolved the closure with the kernel's own metadata and wrote the
load order (dependencies first) to MODULES_LIST; PID 1 just calls
finit_module() on each file in that order.  There is no modprobe here.
"""

import errno
import os

from initsys import libc

MODULES_LIST = "/usr/lib/kindling/modules.list"
# Modules present only as soft dependencies (e.g. crc32c-intel for libcrc32c):
# they may legitimately fail (ENODEV without SSE4.2) and a fallback exists.
SOFTDEP_LIST = "/usr/lib/kindling/modules.softdep"


def on_demand_list(name):
    """The load list of a module group loaded only when needed (image_build/kmod.py
    ON_DEMAND_MODULES): e.g. `nfs` for the first NFS volume."""
    return f"/usr/lib/kindling/modules.{name}"


def load_on_demand(name):
    """Load a group of on-demand modules (already loaded: nothing to do).  Raises OSError
    naming the group when this initrd has none (a kernel without them)."""
    path = on_demand_list(name)
    if not os.path.exists(path):
        raise OSError(f"this initrd has no {name} kernel modules ({path} is missing): "
                      "the kernel it was built for lacks them")
    for module in module_paths(path):
        load(module)


def module_paths(list_path=MODULES_LIST):
    try:
        with open(list_path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _open(path):
    """A descriptor of the module's ELF: the file itself, or for an xz-packed on-demand
    module (image_build/kmod.py PACKED_SUFFIX) a memfd holding it unpacked."""
    if not path.endswith(".xz"):
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    import lzma  # only an on-demand group (an NFS volume) pays for it
    with lzma.open(path) as packed:
        elf = packed.read()
    fd = os.memfd_create(os.path.basename(path), os.MFD_CLOEXEC)
    view = memoryview(elf)
    while view:
        view = view[os.write(fd, view):]
    return fd


def load(path):
    """Load one module; already-loaded (EEXIST) is fine."""
    fd = _open(path)
    try:
        libc.finit_module(fd)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise OSError(e.errno, f"loading kernel module {path}: {os.strerror(e.errno)}") from None
    finally:
        os.close(fd)


def load_all(list_path=MODULES_LIST, softdep_path=SOFTDEP_LIST, only=None):
    """Load every module in order; returns the soft dependencies that failed.
    `only`: a predicate on a module's path, to load just those (a template's checkpoint
    loads all but the block driver, then it: initsys/checkpoint.py).

    A required module that fails raises OSError naming it.
    """
    optional = set(module_paths(softdep_path))
    skipped = []
    for path in module_paths(list_path):
        if only is not None and not only(path):
            continue
        try:
            load(path)
        except OSError:
            if path not in optional:
                raise
            skipped.append(path)
    return skipped
