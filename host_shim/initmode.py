"""Which init mode a VM boots in (config.json `init_mode`, PROTOCOL.md §2).

`auto` picks systemd when the program is an init -- the user's command, or when
there is none, the image's own command (the Debian base's /sbin/init) -- and
exec otherwise.  `exec` and `systemd` override it.  In systemd mode
config.json's `entrypoint` is the init's argv.
"""

INIT_MODES = ("auto", "exec", "systemd")
SYSTEMD_INITS = ("/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd")


def choose(user_command, image_command, requested: str = "auto") -> tuple[tuple[str, ...], str]:
    """(the command to run, its init mode): the user's command, else the image's own."""
    if requested not in INIT_MODES:
        raise ValueError(f"init mode {requested!r}: expected one of {', '.join(INIT_MODES)}")
    command = tuple(user_command) or tuple(image_command or ())
    if requested != "auto":
        return command, requested
    return command, "systemd" if command[:1] and command[0] in SYSTEMD_INITS else "exec"
