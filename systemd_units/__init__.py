"""The systemd units a systemd-mode guest needs, and their installation.

PID 1 (initsys/systemd_mode.py) calls `install()` on the new root just before it
execs systemd: the unit files of this directory are rendered (only the paths
marked @RUNTIME@ / @TARBALL@ are filled in), written to <root>/etc/systemd/system,
enabled the way `systemctl enable` would (a symlink in the target's .wants/),
and the agent's environment file is written to <root>/run/kindling/agent.env.

Both units run on the initrd's own Python: PID 1 bind-mounts the initramfs
root read-only at RUNTIME (in the new root's /run, which systemd keeps), so
the image itself needs no Python.
"""

import os

UNIT_DIR = os.path.dirname(os.path.abspath(__file__))
RUNTIME = "/run/kindling/initrd"       # the initrd's root, inside the new root
AGENT_ENV_FILE = "/run/kindling/agent.env"
AGENT_UNIT = "kindling-agent.service"
HEADERS_UNIT = "kindling-headers.service"
WANTED_BY = {AGENT_UNIT: "sysinit.target", HEADERS_UNIT: "multi-user.target"}
SYSTEM_DIR = "etc/systemd/system"


def render(name, runtime=RUNTIME, tarball=""):
    """The text of unit `name` with its paths filled in."""
    with open(os.path.join(UNIT_DIR, name), encoding="utf-8") as f:
        text = f.read()
    return text.replace("@RUNTIME@", runtime).replace("@TARBALL@", tarball)


def quote_env_value(value):
    """A value for a systemd EnvironmentFile: double-quoted; inside the quotes
    backslash escapes exactly \\ " ` $ (systemd's env-file parser)."""
    if "\0" in value:
        raise ValueError("an environment value cannot contain NUL")
    out = []
    for ch in value:
        if ch in '\\"`$':
            out.append("\\")
        out.append(ch)
    return '"' + "".join(out) + '"'


def env_file_text(env):
    lines = []
    for name, value in env.items():
        if not name or "=" in name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ValueError(f"environment name {name!r} cannot go into a systemd EnvironmentFile"
                             " (expected letters, digits and _)")
        lines.append(f"{name}={quote_env_value(value)}\n")
    return "".join(lines)


def _write(path, text, mode=0o644):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _enable(root, name):
    wants = os.path.join(root, SYSTEM_DIR, WANTED_BY[name] + ".wants")
    os.makedirs(wants, exist_ok=True)
    link = os.path.join(wants, name)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink("/" + SYSTEM_DIR + "/" + name, link)


def install(root, *, agent_args=None, agent_env=None, headers_tarball=None, runtime=RUNTIME):
    """Install and enable the units into `root`.

    agent_args: the agent's transport arguments (a list), or None for no agent.
    agent_env:  the environment of the agent and of the commands it runs.
    headers_tarball: the headers tarball's path inside `root`, or None for no headers unit.
    Returns the unit files written.
    """
    system = os.path.join(root, SYSTEM_DIR)
    os.makedirs(system, exist_ok=True)
    written = []
    if agent_args is not None:
        for arg in agent_args:
            if not arg or any(c.isspace() for c in arg) or "$" in arg or "%" in arg:
                raise ValueError(f"agent argument {arg!r} cannot be passed through $KINDLING_AGENT_ARGS")
        env = dict(agent_env or {})
        env["KINDLING_AGENT_ARGS"] = " ".join(agent_args)
        env_path = os.path.join(root, AGENT_ENV_FILE.lstrip("/"))
        os.makedirs(os.path.dirname(env_path), exist_ok=True)
        _write(env_path, env_file_text(env), 0o600)
        written.append(_install_unit(root, system, AGENT_UNIT, runtime, ""))
    if headers_tarball is not None:
        written.append(_install_unit(root, system, HEADERS_UNIT, runtime, headers_tarball))
    return written


def _install_unit(root, system, name, runtime, tarball):
    path = os.path.join(system, name)
    _write(path, render(name, runtime, tarball))
    _enable(root, name)
    return path
