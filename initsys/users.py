"""Users and groups by name or number, from the guest root's /etc/passwd and /etc/group.

One definition for PID 1 (config.json's `user`, initsys/program.py) and the agent
(exec's `user`, agent/execs.py).  It imports nothing: PID 1 loads it.
"""


class UserError(ValueError):
    """No such user or group: the message names it and the file searched."""


def _read_db(path):
    try:
        with open(path, "rb") as f:
            data = f.read(4 << 20)
    except OSError:
        return []
    return [line.split(b":") for line in data.splitlines() if line and not line.startswith(b"#")]


def resolve_user(spec, passwd="/etc/passwd", group="/etc/group"):
    """"name", "uid", "name:group", "uid:gid" -> (uid, gid, extra gids, home or None).

    Names are looked up in the root's own /etc/passwd and /etc/group (no NSS:
    PID 1 and the agent run from the initrd's runtime, the files are the guest's).
    """
    if isinstance(spec, int):
        spec = str(spec)
    user, _, grp = spec.partition(":")
    users = _read_db(passwd)
    entry = None
    if user.isdigit():
        uid = int(user)
        entry = next((e for e in users if len(e) >= 6 and e[2] == user.encode()), None)
    else:
        entry = next((e for e in users if len(e) >= 6 and e[0] == user.encode()), None)
        if entry is None or not entry[2].isdigit():
            raise UserError(f"user {user!r}: no such user in {passwd}")
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else uid
    groups = _read_db(group)
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            g = next((e for e in groups if len(e) >= 3 and e[0] == grp.encode()), None)
            if g is None or not g[2].isdigit():
                raise UserError(f"group {grp!r}: no such group in {group}")
            gid = int(g[2])
    name = entry[0] if entry is not None else None
    extra = []
    if name is not None:
        for e in groups:
            if len(e) >= 4 and e[2].isdigit() and name in e[3].strip().split(b","):
                extra.append(int(e[2]))
    if gid not in extra:
        extra.insert(0, gid)
    home = entry[5].decode("utf-8", "surrogateescape") if entry is not None else None
    return uid, gid, extra, home
