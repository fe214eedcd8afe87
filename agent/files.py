"""Copying trees both ways, and stat.

A tree travels on one channel as `entry` frames, each file's entry followed by
exactly `size` bytes of `data` frames, then `eof`.  Entries come in depth-first
pre-order: the root first (path ""), every directory before what it holds.
Both ends use this module: the agent sends trees for `get` and receives them
for `put`; the host client does the opposite (host_shim/agent_client.py).

TreeWriter, the receiving side, is written for an untrusted sender (the host
receiving from a guest): names are checked (no absolute paths, no '..'), every
entry is created relative to a directory fd that the writer itself created or
opened with O_NOFOLLOW, so nothing is ever written through a symlink, and a
directory must have been sent before anything in it.  Files and symlinks are
written to a temporary name and renamed over the destination (atomic
replacement).  Directory modes and mtimes are applied when the writer leaves
the directory (a stack as deep as the tree, at most MAX_DEPTH).  File I/O is
plain blocking os.read/os.write on the event loop: a local disk answers in
microseconds, and a thread hop per 64 KiB chunk costs more under TCG.
"""

import errno
import os
import stat as statmod

from agent.mux import EOF
from agent.wire import ProtocolError, check_relpath, field

MAX_DEPTH = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TYPES = ("file", "dir", "symlink")


def file_type(mode):
    if statmod.S_ISREG(mode):
        return "file"
    if statmod.S_ISDIR(mode):
        return "dir"
    if statmod.S_ISLNK(mode):
        return "symlink"
    if statmod.S_ISCHR(mode):
        return "char"
    if statmod.S_ISBLK(mode):
        return "block"
    if statmod.S_ISFIFO(mode):
        return "fifo"
    if statmod.S_ISSOCK(mode):
        return "socket"
    return "unknown"


def stat_path(path, follow=False):
    """The stat result message for a path."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return {"exists": False}
    info = {"exists": True, "type": file_type(st.st_mode), "mode": statmod.S_IMODE(st.st_mode),
            "size": st.st_size, "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns}
    if statmod.S_ISLNK(st.st_mode):
        info["target"] = os.readlink(path)
    return info


# --- sending a tree -------------------------------------------------------------

def _entry(rel, st, owner):
    e = {"path": rel, "type": file_type(st.st_mode), "mode": statmod.S_IMODE(st.st_mode),
         "mtime_ns": st.st_mtime_ns}
    if owner:
        e["uid"] = st.st_uid
        e["gid"] = st.st_gid
    return e


def walk_tree(root, *, follow_root=False, owner=True):
    """(entry, path) in depth-first pre-order; special files come with their type and are
    skipped by the sender."""
    st = os.stat(root) if follow_root else os.lstat(root)
    yield _entry("", st, owner), root
    if not statmod.S_ISDIR(st.st_mode):
        return
    stack = [("", root, iter(sorted(os.listdir(root))))]
    while stack:
        rel, path, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        cpath = os.path.join(path, name)
        crel = f"{rel}/{name}" if rel else name
        st = os.lstat(cpath)
        yield _entry(crel, st, owner), cpath
        if statmod.S_ISDIR(st.st_mode):
            if len(stack) >= MAX_DEPTH:
                raise OSError(errno.ELOOP, f"tree deeper than {MAX_DEPTH} levels", cpath)
            stack.append((crel, cpath, iter(sorted(os.listdir(cpath)))))


async def send_tree(session, ch, root, *, follow_root=False, owner=True):
    """Send the tree at root on a session channel (no eof).  Returns (entries, bytes, skipped)."""
    entries = nbytes = skipped = 0
    chunk = session.mux.chunk
    for e, path in walk_tree(root, follow_root=follow_root, owner=owner):
        typ = e["type"]
        if typ == "symlink":
            e["target"] = os.readlink(path)
        elif typ == "file":
            # O_NONBLOCK: a file swapped for a FIFO after lstat must not hang the open
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
                         | (0 if (follow_root and not e["path"]) else os.O_NOFOLLOW))
            try:
                st = os.fstat(fd)
                if not statmod.S_ISREG(st.st_mode):
                    skipped += 1
                    continue
                e.update(_entry(e["path"], st, owner))
                e["size"] = remaining = st.st_size
                await session.send_entry(ch, e)
                while remaining:
                    data = os.read(fd, min(chunk, remaining))
                    if not data:
                        raise OSError(errno.EIO, f"file shrank while being read ({remaining} bytes short)", path)
                    remaining -= len(data)
                    nbytes += len(data)
                    await session.send_data(ch, data)
            finally:
                os.close(fd)
            entries += 1
            continue
        elif typ != "dir":
            skipped += 1
            continue
        await session.send_entry(ch, e)
        entries += 1
    return entries, nbytes, skipped


# --- receiving a tree -----------------------------------------------------------

class TreeWriter:
    """Writes a received tree at `root` (the path the tree's root becomes).

    owner: apply uid/gid from entries.  keep_setid: keep setuid/setgid bits.
    max_bytes / max_entries: refuse a tree larger than that (None: no limit).
    """

    def __init__(self, root, *, owner, keep_setid, max_bytes=None, max_entries=None):
        self.root = os.path.abspath(root)
        self.owner = owner
        self.keep_setid = keep_setid
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.entries = 0
        self.bytes = 0
        self.root_type = None
        self._stack = []        # open directories: [parts, fd, entry]
        self._file = None       # [fd, parent_fd, tmp name, name, entry, remaining, path]

    # --- helpers ---

    def _where(self, parts):
        return os.path.join(self.root, *parts) if parts else self.root

    def _mode(self, e, default):
        mode = field(e, "mode", int, default=default, where="entry") & 0o7777
        return mode if self.keep_setid else mode & 0o1777

    def _apply(self, fd, e, mode):
        if self.owner and (e.get("uid") is not None or e.get("gid") is not None):
            uid = field(e, "uid", int, default=-1, where="entry")
            gid = field(e, "gid", int, default=-1, where="entry")
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        mtime = field(e, "mtime_ns", int, where="entry")
        if mtime is not None:
            os.utime(fd, ns=(mtime, mtime))

    def _leave_until(self, parts):
        """Close the directories that are not ancestors of parts, applying mode and mtime."""
        while self._stack:
            dparts, fd, e = self._stack[-1]
            if len(dparts) < len(parts) and parts[:len(dparts)] == dparts:
                return
            self._stack.pop()
            try:
                self._apply(fd, e, self._mode(e, 0o755))
            finally:
                os.close(fd)

    def _parent(self, parts, path):
        if not parts:
            parent = os.path.dirname(self.root)
            try:
                return os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), False
            except OSError as e:
                raise OSError(e.errno, f"destination directory: {e.strerror}", parent) from None
        self._leave_until(parts)
        if not self._stack or self._stack[-1][0] != parts[:-1]:
            raise ProtocolError(f"entry {path!r}: its directory was not sent before it", code="invalid")
        return self._stack[-1][1], True

    # --- the stream ---

    def entry(self, e):
        if self._file is not None:
            f = self._file
            raise ProtocolError(f"entry before the end of file {f[6]!r} ({f[5]} bytes missing)", code="invalid")
        path = field(e, "path", str, required=True, where="entry")
        parts = tuple(check_relpath(path))
        typ = field(e, "type", str, required=True, where="entry")
        if typ not in _TYPES:
            raise ProtocolError(f"entry {path!r}: type {typ!r} (expected file, dir or symlink)", code="invalid")
        if self.entries == 0 and parts:
            raise ProtocolError(f"entry {path!r}: the tree's root (path '') must come first", code="invalid")
        if self.entries and not parts:
            raise ProtocolError("a second root entry", code="invalid")
        if parts and self.root_type != "dir":
            raise ProtocolError(f"entry {path!r}: the root is not a directory", code="invalid")
        if len(parts) > MAX_DEPTH:
            raise ProtocolError(f"entry {path!r}: deeper than {MAX_DEPTH} levels", code="unsafe_path")
        if self.max_entries is not None and self.entries >= self.max_entries:
            raise ProtocolError(f"more than {self.max_entries} entries", code="too_large")
        self.entries += 1
        if not parts:
            self.root_type = typ
        name = parts[-1] if parts else os.path.basename(self.root)
        parent_fd, borrowed = self._parent(parts, path)
        try:
            if typ == "dir":
                self._dir(parent_fd, name, parts, e)
            elif typ == "symlink":
                self._symlink(parent_fd, name, parts, e)
            else:
                self._begin_file(parent_fd, name, parts, e, borrowed)
                borrowed = True     # the open file keeps the parent fd until it is complete
        finally:
            if not borrowed:
                os.close(parent_fd)

    def _dir(self, parent_fd, name, parts, e):
        where = self._where(parts)
        if not name:    # the root is "/"
            fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            try:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                pass
            # the root is the path the caller chose: it may be a symlink to a directory
            flags = _DIR_FLAGS if parts else _DIR_FLAGS & ~os.O_NOFOLLOW
            try:
                fd = os.open(name, flags, dir_fd=parent_fd)
            except OSError as err:
                if err.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise ProtocolError(f"{where}: exists and is not a directory"
                                        " (refusing to replace it or follow a symlink)", code="exists") from None
                raise OSError(err.errno, err.strerror, where) from None
        self._stack.append([parts, fd, e])

    def _tmpname(self):
        return f".kindling-{os.urandom(6).hex()}"

    def _symlink(self, parent_fd, name, parts, e):
        target = field(e, "target", str, required=True, where="entry")
        if not target or "\0" in target or len(target) > 4096:
            raise ProtocolError(f"entry {'/'.join(parts)!r}: bad symlink target", code="invalid")
        tmp = self._tmpname()
        os.symlink(target, tmp, dir_fd=parent_fd)
        try:
            if self.owner and (e.get("uid") is not None or e.get("gid") is not None):
                os.chown(tmp, field(e, "uid", int, default=-1, where="entry"),
                         field(e, "gid", int, default=-1, where="entry"), dir_fd=parent_fd, follow_symlinks=False)
            mtime = field(e, "mtime_ns", int, where="entry")
            if mtime is not None:
                os.utime(tmp, ns=(mtime, mtime), dir_fd=parent_fd, follow_symlinks=False)
            self._rename(parent_fd, tmp, name, parts)
        except BaseException:
            _unlink(tmp, parent_fd)
            raise

    def _rename(self, parent_fd, tmp, name, parts):
        try:
            os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except OSError as err:
            raise OSError(err.errno, f"cannot replace: {err.strerror}", self._where(parts)) from None

    def _begin_file(self, parent_fd, name, parts, e, borrowed):
        size = field(e, "size", int, required=True, where="entry")
        if size < 0:
            raise ProtocolError(f"entry {'/'.join(parts)!r}: negative size", code="invalid")
        if self.max_bytes is not None and self.bytes + size > self.max_bytes:
            raise ProtocolError(f"tree larger than {self.max_bytes} bytes", code="too_large")
        tmp = self._tmpname()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent_fd)
        self._file = [fd, parent_fd, tmp, name, e, size, "/".join(parts), borrowed]
        if size == 0:
            self._end_file()

    def data(self, data):
        f = self._file
        if f is None:
            raise ProtocolError("file data without a file entry", code="invalid")
        if len(data) > f[5]:
            raise ProtocolError(f"file {f[6]!r}: more data than its size", code="invalid")
        view = memoryview(data)
        while view:
            n = os.write(f[0], view)
            view = view[n:]
        f[5] -= len(data)
        self.bytes += len(data)
        if f[5] == 0:
            self._end_file()

    def _end_file(self):
        fd, parent_fd, tmp, name, e, _, path, borrowed = self._file
        self._file = None
        try:
            self._apply(fd, e, self._mode(e, 0o644))
            os.close(fd)
            fd = None
            self._rename(parent_fd, tmp, name, path.split("/") if path else [])
        except BaseException:
            if fd is not None:
                os.close(fd)
            _unlink(tmp, parent_fd)
            raise
        finally:
            if not borrowed:
                os.close(parent_fd)

    def finish(self):
        if self._file is not None:
            raise ProtocolError(f"tree ended inside file {self._file[6]!r} ({self._file[5]} bytes missing)",
                                code="invalid")
        if not self.entries:
            raise ProtocolError("empty tree (no root entry)", code="invalid")
        self._leave_until(())
        return self.entries, self.bytes

    def abort(self):
        """Remove the half-written file, close everything (mode/mtime of open dirs are not applied)."""
        f, self._file = self._file, None
        if f is not None:
            os.close(f[0])
            _unlink(f[2], f[1])
            if not f[7]:
                os.close(f[1])
        for _, fd, _ in self._stack:
            os.close(fd)
        self._stack.clear()


def _unlink(name, dir_fd):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


async def receive_tree(session, ch, writer):
    """Feed a tree arriving on a session channel into a TreeWriter until eof."""
    try:
        while True:
            item = await session.receive(ch)
            if item is EOF:
                break
            if isinstance(item, dict):
                writer.entry(item)
            else:
                writer.data(item)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


# --- agent operations ------------------------------------------------------------

async def run_stat(session, body, agent):
    path = field(body, "path", str, required=True, where="stat")
    follow = field(body, "follow", bool, default=False, where="stat")
    await session.send("result", stat_path(path, follow))


async def run_put(session, body, agent):
    path = field(body, "path", str, required=True, where="put")
    writer = TreeWriter(path, owner=True, keep_setid=True)
    entries, nbytes = await receive_tree(session, "in", writer)
    await session.send("result", {"entries": entries, "bytes": nbytes})


async def run_get(session, body, agent):
    path = field(body, "path", str, required=True, where="get")
    follow = field(body, "follow", bool, default=False, where="get")
    entries, nbytes, skipped = await send_tree(session, "out", path, follow_root=follow)
    await session.send_eof("out")
    await session.send("result", {"entries": entries, "bytes": nbytes, "skipped": skipped})
