"""The kernel-headers worker (PROTOCOL.md §5): install the running kernel's headers
from the tarball image_build put in the initrd, off the boot's critical path.

    python -m initsys.headers [--tarball PATH] [--root DIR] [--release REL]
                              [--status FILE] [--log FILE]

PID 1 starts it in exec mode as a background process and never waits for it
(initsys/headers_launch.py); in systemd mode a oneshot unit runs it.  It
lowers its own CPU and I/O priority first (nice 19, I/O class idle), then:

* status file `<root>/run/kindling/kernel-headers.status`, written atomically:
  `running`, then `ready` or `failed` (PID 1 wrote `pending` before the launch);
* HYPEMAN-HEADERS-START, then HYPEMAN-HEADERS-READY or HYPEMAN-HEADERS-FAILED
  with a one-line reason, each in one write() on fd 1 (the console);
* fast path: `<root>/usr/src/linux-headers-<rel>` exists and
  `<root>/lib/modules/<rel>/build` is a symlink to `/usr/src/linux-headers-<rel>`:
  READY at once, nothing extracted;
* otherwise: the `build` link is removed (un-committed), the tarball is
  extracted into a staging dir under `<root>/usr/src/`, each tree gets a marker
  file and is moved into place, and the `build` link is made LAST, atomically
  (symlink + rename): it is the commit point, so an install cut short by a
  power-off is redone on the next boot.  Then the trees of other kernel
  releases that *we* installed (per their markers) are removed with their
  `build` links; trees without our marker are never touched.

What it did goes to `--log` (default `<root>/run/kindling/kernel-headers.log`):
`kindling-headers: already installed (fast path)`, or one line with the file
count and the extraction's duration.  Not to the console: once the program
runs, the host shows every non-sentinel console line as the program's output.

Extraction is checked member by member (the guest's Python 3.11.2 has no
tarfile `filter="data"`): only files, directories and symlinks; names relative,
without `..`, inside `usr/src/<tree>` or `usr/lib/<tree>`; nothing below a
symlink of the archive; symlink targets relative and inside the staging dir;
modes masked to 0755, owner root.  Symlinks of the target root on the way
(`/lib -> usr/lib`, even absolute ones) are resolved inside the root, as a
chroot would.

Imports are kept lazy: under TCG each one costs ~13x its host time, and the
fast path needs neither tarfile nor shutil.
"""

import os
import sys

HEADERS_DIR = "/usr/lib/kindling/headers"   # in the initrd: the tarball image_build ships
TARBALL_PREFIX = "linux-headers-"
STATUS_FILE = "run/kindling/kernel-headers.status"   # relative to the root
LOG_FILE = "run/kindling/kernel-headers.log"
MARKER = ".kindling-headers"                 # in each tree we install: what we installed
STAGING = ".kindling-headers-staging"        # under <root>/usr/src
TREE_PARENTS = ("usr/src", "usr/lib")
LOG_PREFIX = "kindling-headers: "
IOPRIO_CLASS_IDLE = 3
NICE = 19


class Failed(Exception):
    """A reason for HYPEMAN-HEADERS-FAILED, one line."""


def tarball_name(release, compression):
    """`linux-headers-<release>.tar.<ext>`: the one name both sides use."""
    return f"{TARBALL_PREFIX}{release}.tar.{compression}"


def find_tarball(release, directory=HEADERS_DIR):
    """The single tarball for `release` in `directory`."""
    prefix = f"{TARBALL_PREFIX}{release}.tar."
    try:
        found = sorted(n for n in os.listdir(directory) if n.startswith(prefix))
    except FileNotFoundError:
        found = []
    if not found:
        raise Failed(f"no kernel headers tarball for {release} in {directory}")
    if len(found) > 1:
        raise Failed(f"{len(found)} kernel headers tarballs for {release} in {directory}: {', '.join(found)}")
    return os.path.join(directory, found[0])


# --- small helpers -------------------------------------------------------------------

def lower_io_priority():
    """I/O class idle (main sets nice 19 first thing): the program and the agent
    always come first."""
    from initsys import libc

    libc.ioprio_set(libc.IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << libc.IOPRIO_CLASS_SHIFT)


def write_atomic(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def log_line(path, text):
    """One line of what happened, appended to the log in one write()."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, (LOG_PREFIX + text + "\n").encode("utf-8", "backslashreplace"))
        finally:
            os.close(fd)
    except OSError:
        pass  # the log is for people and tests; it never fails the install


def in_root(root, path, create=False):
    """`path` (relative to `root`) as a host path, each symlink on the way resolved
    inside `root` as a chroot would (`lib -> /usr/lib` means `<root>/usr/lib`);
    missing directories are made when `create`."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        if os.path.islink(here):
            hops += 1
            if hops > 40:
                raise Failed(f"too many levels of symbolic links resolving /{path} in {root}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not os.path.exists(here):
            if not create:
                return os.path.join(root, *done, part, *parts)
            os.mkdir(here, 0o755)
        done.append(part)
    return os.path.join(root, *done)


def link_target(release):
    return f"/usr/src/linux-headers-{release}"


def installed(root, release):
    """The fast path's test: the tree exists and `build` points at it."""
    build = os.path.join(in_root(root, f"lib/modules/{release}"), "build")
    try:
        return (os.readlink(build) == link_target(release)
                and os.path.isdir(in_root(root, f"usr/src/linux-headers-{release}")))
    except OSError:
        return False


def read_marker(tree):
    """Our marker in `tree` as a dict, or None (not ours)."""
    import json

    try:
        with open(os.path.join(tree, MARKER)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("installed_by") == "kindling" else None


# --- extraction --------------------------------------------------------------------

def _tree_of(name, tarball):
    """The tree (`usr/src/X` or `usr/lib/Y`) a checked member name belongs to."""
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or name.startswith("/"):
        raise Failed(f"{tarball}: unsafe member name {name!r}")
    if len(parts) < 3 or "/".join(parts[:2]) not in TREE_PARENTS:
        raise Failed(f"{tarball}: member {name!r} is outside usr/src/<tree> and usr/lib/<tree>")
    return "/".join(parts[:3])


def _check_symlink(name, target, tarball):
    if not target or target.startswith("/"):
        raise Failed(f"{tarball}: symlink {name!r} -> {target!r} is not relative")
    resolved = os.path.normpath(os.path.join(os.path.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise Failed(f"{tarball}: symlink {name!r} -> {target!r} points outside the archive")


def _make_parent(staging, name, made, links, tarball):
    """Make the directories above member `name` (none may be below a symlink)."""
    parent = os.path.dirname(name)
    probe = parent
    while probe:
        if probe in links:
            raise Failed(f"{tarball}: member {name!r} lies below the symlink {probe!r}")
        probe = os.path.dirname(probe)
    if parent not in made:
        os.makedirs(os.path.join(staging, parent), 0o755, exist_ok=True)
        while parent and parent not in made:
            made.add(parent)
            parent = os.path.dirname(parent)


def _write_member(tar, m, dest):
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 m.mode & 0o755)
    with open(fd, "wb") as out:
        src = tar.extractfile(m)
        while chunk := src.read(1 << 20):
            out.write(chunk)
        out.flush()
        os.utime(fd, (m.mtime, m.mtime))


def _extract_members(tar, tarball, staging):
    """Every member, checked, into `staging`; returns (trees, files, dir_times)."""
    trees, links, made, dir_times, files = set(), set(), {""}, [], 0
    for m in tar:
        name = m.name
        while name.startswith("./"):
            name = name[2:]
        if name in ("", "."):
            continue
        tree = _tree_of(name, tarball)
        trees.add(tree)
        _make_parent(staging, name, made, links, tarball)
        dest = os.path.join(staging, name)
        if m.isdir():
            if name not in made:
                os.mkdir(dest, m.mode & 0o755 | 0o700)
                made.add(name)
            dir_times.append((dest, m.mtime))
        elif m.isreg():
            _write_member(tar, m, dest)
            files += 1
        elif m.issym():
            if name == tree:
                raise Failed(f"{tarball}: the tree {name!r} is a symlink")
            _check_symlink(name, m.linkname, tarball)
            os.symlink(m.linkname, dest)
            links.add(name)   # nothing may go below a symlink
        else:
            raise Failed(f"{tarball}: member {name!r} is neither a file, a directory nor a symlink")
    return trees, files, dir_times


def extract(tarball, staging):
    """Extract `tarball` into the empty dir `staging`, checking every member.
    Returns (trees, number of files)."""
    import tarfile

    try:
        tar = tarfile.open(tarball, "r|*")  # stream mode: one decompression pass
    except (OSError, tarfile.TarError) as e:
        raise Failed(f"{tarball}: cannot open: {e}") from None
    with tar:
        try:
            trees, files, dir_times = _extract_members(tar, tarball, staging)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise Failed(f"{tarball}: {type(e).__name__}: {e}") from None
    for dest, mtime in reversed(dir_times):
        os.utime(dest, (mtime, mtime))
    return trees, files


# --- install -----------------------------------------------------------------------

def install(root, release, tarball):
    """Extract, move the trees into place, commit with the `build` link.
    Returns (trees, files)."""
    import shutil

    build = os.path.join(in_root(root, f"lib/modules/{release}"), "build")
    if os.path.islink(build):
        os.unlink(build)  # un-commit before the trees change
    src_dir = in_root(root, "usr/src", create=True)
    staging = os.path.join(src_dir, STAGING)
    if os.path.lexists(staging):
        shutil.rmtree(staging)  # an earlier install that was cut short
    os.mkdir(staging, 0o700)
    try:
        trees, files = _move_into_place(root, release, tarball, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    build = os.path.join(in_root(root, f"lib/modules/{release}", create=True), "build")
    tmp = f"{build}.kindling-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(link_target(release), tmp)
    os.replace(tmp, build)  # the commit point
    return trees, files


def _move_into_place(root, release, tarball, staging):
    """Extract into `staging`, mark each tree as ours, move it to its place."""
    import json
    import shutil

    trees, files = extract(tarball, staging)
    if f"usr/src/linux-headers-{release}" not in trees:
        raise Failed(f"{tarball} has no usr/src/linux-headers-{release} (it holds {', '.join(sorted(trees))})")
    marker = json.dumps({"installed_by": "kindling", "release": release, "trees": sorted(trees)}) + "\n"
    for tree in sorted(trees):
        parent, name = tree.rsplit("/", 1)
        staged = os.path.join(staging, tree)
        with open(os.path.join(staged, MARKER), "w") as f:
            f.write(marker)
        dest = os.path.join(in_root(root, parent, create=True), name)
        if os.path.lexists(dest):
            if os.path.islink(dest) or read_marker(dest) is None:
                raise Failed(f"/{tree} exists and was not installed by kindling; not replacing it")
            shutil.rmtree(dest)
        shutil.move(staged, dest)
    return trees, files


def remove_stale(root, release, current):
    """Remove the trees of other releases that we installed, and their `build` links.
    Returns the trees removed."""
    import shutil

    removed = []
    for parent in TREE_PARENTS:
        pdir = in_root(root, parent)
        try:
            names = sorted(os.listdir(pdir))
        except FileNotFoundError:
            continue
        for name in names:
            tree = os.path.join(pdir, name)
            if f"{parent}/{name}" in current or os.path.islink(tree):
                continue
            info = read_marker(tree)
            if info is None or info.get("release") == release:
                continue
            shutil.rmtree(tree)
            removed.append(f"{parent}/{name}")
            old = info.get("release")
            if isinstance(old, str) and old and "/" not in old and old not in (".", ".."):
                mod_dir = in_root(root, f"lib/modules/{old}")
                build = os.path.join(mod_dir, "build")
                if os.path.islink(build) and os.readlink(build) == link_target(old):
                    os.unlink(build)
                    try:
                        os.rmdir(mod_dir)
                    except OSError:
                        pass  # other files there: not ours to remove
    return removed


# --- main ----------------------------------------------------------------------------

USAGE = "usage: headers [--tarball PATH] [--root DIR] [--release REL] [--status FILE] [--log FILE]"
OPTIONS = ("--tarball", "--root", "--release", "--status", "--log")


def parse_args(argv):
    """A few `--option value` pairs (argparse would cost ~0.1 s of imports under TCG)."""
    opts = {}
    args = list(argv)
    while args:
        opt = args.pop(0)
        key, eq, value = opt.partition("=")
        if key not in OPTIONS:
            raise Failed(f"unknown argument {opt!r}; {USAGE}")
        if not eq:
            if not args:
                raise Failed(f"{opt} needs a value; {USAGE}")
            value = args.pop(0)
        opts[key[2:]] = value
    root = opts.get("root", "/")
    return {
        "root": root,
        "release": opts.get("release") or os.uname().release,
        "tarball": opts.get("tarball"),
        "status": opts.get("status") or os.path.join(root, STATUS_FILE),
        "log": opts.get("log") or os.path.join(root, LOG_FILE),
    }


def run(opts):
    """The work between START and READY; raises on failure."""
    import time

    root, release, log = opts["root"], opts["release"], opts["log"]
    if installed(root, release):
        log_line(log, "already installed (fast path)")
        return
    tarball = opts["tarball"] or find_tarball(release)
    started = time.monotonic()
    trees, files = install(root, release, tarball)
    log_line(log, f"installed {files} files for {release} in {time.monotonic() - started:.2f} s"
                  f" from {tarball}")
    try:
        removed = remove_stale(root, release, trees)
    except OSError as e:  # installed and committed already: not a failure of the install
        log_line(log, f"could not remove stale headers: {e}")
        return
    if removed:
        log_line(log, f"removed stale headers: {', '.join(removed)}")


def main(argv):
    os.setpriority(os.PRIO_PROCESS, 0, NICE)  # first: everything after this costs CPU
    from initsys import console, control, protocol

    control.adopt_inherited()

    status = None
    started = False
    try:
        opts = parse_args(argv)
        status = opts["status"]
        lower_io_priority()
        os.umask(0o022)
        write_atomic(status, "running\n")
        console.emit(protocol.headers_start_line())
        started = True
        run(opts)
        write_atomic(status, "ready\n")
    except Exception as e:  # every failure is one FAILED line, never a traceback
        reason = str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}"
        reason = " ".join(reason.split())
        if status is not None:
            try:
                write_atomic(status, "failed\n")
            except OSError:
                pass
        if not started:
            console.emit(protocol.headers_start_line())
        console.emit(protocol.headers_failed_line(reason))
        return 1
    console.emit(protocol.headers_ready_line())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
