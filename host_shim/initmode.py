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
    return command, "systemd" if is_init(command) else "exec"


def is_init(command) -> bool:
    return bool(command) and command[0] in SYSTEMD_INITS


def split_run(user_command, image_command, requested: str = "auto"
              ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """For `kindling run`: (the VM's own command, the program to run through the agent).

    In exec mode the VM's command is the program, and nothing runs through the agent.
    In systemd mode on an image with its own init (`--base debian --init-mode systemd
    -- CMD`, CMD not an init) the VM boots that init and CMD is the program: `run`
    waits for Running, runs it through the agent and stops the guest.  Otherwise the
    command is the init, as for `create` (an image without an init of its own: the
    command given is the init to boot), and there is no program: (command, ()).
    """
    command, mode = choose(user_command, image_command, requested)
    if mode != "systemd" or is_init(command) or not is_init(image_command):
        return command, ()
    return tuple(image_command), command
