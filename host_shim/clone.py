"""`kindling create --template NAME` (and `run --template`): an instance restored from a
template's checkpoint instead of booted cold (issue 12; templates: host_shim/template.py).

Everything instance-specific is made exactly as for a cold create, by the same code
(lifecycle.create): the instance directory, config.json and its config disk, the overlay,
the volumes, the logs, the network namespace.  What differs:

* options: the template's image and VM options (template.FIXED: rootfs, kernel, memory,
  cpus, agent transport, --net present or not, ...) are the clone's; giving a different
  one is an error naming it (`options_for`);
* the images: built (cached) from the template's options and compared with the
  template's digests: a changed one refuses the clone (`check_fresh`);
* the disks: the clone's own in the template's places; its unused volume slots get
  placeholders, more volumes than slots is an error (`disks_for`);
* the launch (`launch`): QEMU with the template's device set and this instance's
  backends, `-incoming defer`, fed the template's vmstate (opened read-only: many clones
  read one file), then `cont`, then ONE line on the resume port -- the host's clock, 64
  bytes of os.urandom and the clone's config.json (the same bytes as its config disk)
  -- whose answer says PID 1 has reseeded its RNG and set its clock before anything
  else ran (initsys/checkpoint.py).  From there the guest launches its network helper
  and boots as a cold one from its `disks` stage, printing the same markers.

The host's state model is unchanged: the instance is Initializing from `cont` until
PROGRAM-START and AGENT-READY, then Running.  Its metadata keeps the cold-boot command
line (no `kindling_checkpoint`), so `kindling stop` + `start` boots it cold with the same
devices (the resume port then stays unused).  A launch that fails ends its QEMU;
lifecycle.create then removes the instance: nothing half-made is left.
"""

from __future__ import annotations

import base64
import os
import socket
import time

import trio

from . import options, snapshot, template, vmm
from .errors import KindlingError, die
from .instance import Instance
from .template import Template

LOAD_TIMEOUT = 300.0          # the template's vmstate into QEMU (tens of MB; a loaded host)
ANSWER_TIMEOUT = 60.0         # from the resume line to PID 1's answer (8 clones on 2 cores)
ENTROPY_BYTES = 64


def options_for(tmpl: Template, opts: options.CreateOptions) -> options.CreateOptions:
    """`opts` with the template's fixed options; an explicit different one is an error."""
    made = options.make(options.CreateOptions, {k: tmpl.options[k] for k in template.FIXED}, None)
    defaults = options.checked(options.CreateOptions())    # as converted: --accel's is `auto`
    for name in template.FIXED:
        mine, theirs = getattr(opts, name), getattr(made, name)
        if mine != theirs and mine != getattr(defaults, name):
            flag = options.BY_NAME[name].flag
            die(f"{flag} {_shown(mine)}: template {tmpl.name} was made with {flag} "
                f"{_shown(theirs)}, and a clone cannot change it",
                hint=f"drop {flag}, or make a template with it (`kindling template create`)")
    if opts.initrd is not None or opts.config_disk is not None:
        die("--initrd and --config-disk cannot be used with --template")
    return options.checked(type(opts)(**{**options_fields(opts),
                                         **{k: getattr(made, k) for k in template.FIXED}}))


def options_fields(opts) -> dict:
    return {f: getattr(opts, f) for f in opts.__dataclass_fields__}


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "(none)"
    return str(value)


def check_fresh(tmpl: Template, artifacts) -> None:
    changed = template.changed_images(tmpl, artifacts)
    if changed:
        die(f"template {tmpl.name} is stale: its {' and '.join(changed)} changed since it was "
            f"made (the same options now build a different image)",
            hint=f"`kindling template create {tmpl.name} --rebuild [its options]` makes it again")


def disks_for(tmpl: Template, instance: Instance, disks: tuple) -> tuple:
    """The clone's disks (rootfs, overlay, config, volumes) in the template's places,
    the unused volume slots filled."""
    volumes = len(disks) - 3
    if volumes > tmpl.volume_slots:
        die(f"{volumes} --volume given, but template {tmpl.name} has {tmpl.volume_slots} "
            f"volume slot{'s' if tmpl.volume_slots != 1 else ''}",
            hint=f"make the template with --volume-slots {volumes} (or more)")
    return (*disks, *template.slot_disks(instance, volumes, tmpl.volume_slots))


def resume_line(config: bytes) -> bytes:
    """`<time_ns> <entropy hex> <config.json base64>\\n` (initsys/checkpoint.py)."""
    from initsys.checkpoint import MAX_LINE

    line = (f"{time.time_ns()} {os.urandom(ENTROPY_BYTES).hex()} "
            f"{base64.b64encode(config).decode()}\n").encode()
    if len(line) > MAX_LINE:
        die(f"config.json: {len(config)} bytes, too large for a template's clone "
            f"(the resume line holds at most {MAX_LINE} bytes)")
    return line


async def _resume(instance: Instance, sock: socket.socket, config: bytes) -> None:
    """After `cont`: the resume line, and PID 1's answer."""
    from initsys.checkpoint import ANSWER

    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    await stream.send_all(resume_line(config))
    answer = b""
    with trio.move_on_after(ANSWER_TIMEOUT):
        while not answer.endswith(b"\n"):
            chunk = await stream.receive_some(64)
            if not chunk:
                break
            answer += chunk
    if answer != ANSWER:
        raise KindlingError(f"the guest did not take the resume line (it answered "
                            f"{answer!r} within {ANSWER_TIMEOUT:g} s)",
                            hint=f"see `kindling logs {instance.id}`")


async def launch(tmpl: Template, config: bytes, instance: Instance, argv: list[str]) -> int:
    """QEMU restored from the template, resumed with `config` (the bytes of the clone's
    config.json, image_build/disks.config_bytes); its pid.  Ended again if that fails."""
    resume_line(config)      # too large: an error before QEMU starts
    pid = await vmm.launch(instance, snapshot.incoming_argv(argv))
    try:
        record = snapshot.load_record(tmpl.instance)
        with trio.fail_after(LOAD_TIMEOUT):
            await snapshot.load(instance, record, vmstate=tmpl.vmstate,
                                capabilities=template.IGNORE_SHARED if tmpl.shared_memory else ())
        with template.connected(instance) as sock:    # before `cont`: see initsys/checkpoint.py
            await vmm.cont(instance)
            await _resume(instance, sock, config)
    except BaseException as e:
        with trio.CancelScope(shield=True):
            await vmm.stop(instance, graceful=0)
        if isinstance(e, trio.TooSlowError):
            raise KindlingError(f"loading template {tmpl.name}'s snapshot took over "
                                f"{LOAD_TIMEOUT:g} s") from None
        if isinstance(e, snapshot.SnapshotError):
            raise KindlingError(f"template {tmpl.name} is stale or corrupt: {e.message}",
                                hint=f"`kindling template create {tmpl.name} --rebuild`") from None
        raise
    return pid
