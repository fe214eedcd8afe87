"""Sizes with units: `512M`, `1G`, `4096`, as every size option of Kindling takes them.

A suffix K, M, G or T (optionally followed by `iB` or `B`) is a power of 1024.  What a
bare number means depends on the option and is said in its --help: MiB for --memory
(as QEMU's `-m`), bytes for disk and log sizes (as `truncate -s` and `qemu-img`).
Written here rather than taken from a library: the whole grammar is one regex.
"""

import re

from .errors import die

MIB = 1 << 20
SIZE_RE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.I)
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str | int, flag: str, *, bare: int = 1) -> int:
    """`value` in bytes; a bare number (or an int) counts in units of `bare` bytes.
    A KindlingError names `flag` when `value` is not a size."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        die(f"{flag} {value!r}: expected a size such as 512M or 1G")
    if isinstance(value, int):
        number, unit = value, bare
    else:
        m = SIZE_RE.match(value.strip())
        if not m:
            die(f"{flag} {value!r}: expected a size such as 512M or 1G "
                f"(K, M, G, T: powers of 1024; a bare number is {describe_unit(bare)})")
        number, unit = int(m.group(1)), UNITS.get(m.group(2).upper(), bare)
        if not m.group(2) and m.group(3):   # "100B": bytes, whatever the bare unit
            unit = 1
    if number <= 0:
        die(f"{flag} {value!r}: must be more than 0")
    return number * unit


def describe_unit(bare: int) -> str:
    return "bytes" if bare == 1 else "MiB" if bare == MIB else f"{bare} bytes"


def human(nbytes: int) -> str:
    """512M, 1G, 4K, or a byte count: the shortest exact form."""
    for suffix in ("T", "G", "M", "K"):
        if nbytes % UNITS[suffix] == 0 and nbytes >= UNITS[suffix]:
            return f"{nbytes // UNITS[suffix]}{suffix}"
    return str(nbytes)
