"""`kindling template create|list|rm`: the CLI of host_shim/template.py.

Kept apart from cli.py (which only registers these) so that module stays small.
`template create` takes create's image and VM options (the table of host_shim/options.py;
the program, config and volume options are refused by template.check_options) plus
--volume-slots and --rebuild.  Text by default, `--json` for scripts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import trio

from . import options, template
from .instance import kindling_home


def _home() -> Path:
    return kindling_home()


def _describe(t: template.Template) -> dict:
    return t.to_json()


# The options of `create` that `template create` takes (the rest keep their defaults).
TEMPLATE_ARGS = ("image", "virtual machine")


def cmd_create(args: argparse.Namespace) -> int:
    given = {o.name: getattr(args, o.name) for o in options.OPTIONS
             if o.group in TEMPLATE_ARGS and not o.run_only} | {"net": args.net}
    opts = options.make(options.CreateOptions, given, _home())
    made = trio.run(lambda: template.create(args.template_name, opts, _home(),
                                            volume_slots=args.volume_slots, rebuild=args.rebuild,
                                            shared_memory=args.shared_memory))
    if args.json:
        print(json.dumps(_describe(made), indent=2, sort_keys=True))
    else:
        print(f"{made.name} (built in {made.build_seconds:.1f} s, checkpoint "
              f"{made.checkpoint_seconds:.1f} s after QEMU's start, snapshot "
              f"{made.vmstate_size / 2**20:.0f} MiB)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    found = template.list_all(_home())
    if args.json:
        print(json.dumps([_describe(t) for t in found], indent=2, sort_keys=True))
        return 0
    rows = [("NAME", "MEMORY", "CPUS", "NET", "SLOTS", "SNAPSHOT", "BUILT IN")] + [
        (t.name, f"{t.options['memory']}M", str(t.options["cpus"]),
         "yes" if t.options["net"] else "no", str(t.volume_slots),
         f"{t.vmstate_size / 2**20:.0f}M", f"{t.build_seconds:.1f}s") for t in found]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    template.remove(_home(), args.template_name)
    if args.json:
        print(json.dumps({"name": args.template_name, "removed": True}))
    else:
        print(args.template_name)
    return 0


def add_commands(sub, command) -> None:
    """Register `template` and its subcommands; `command` is cli._command."""
    p = sub.add_parser("template", help="templates: guests snapshotted at their boot's "
                       "checkpoint, for `create --template` (create, list, rm)")
    tsub = p.add_subparsers(dest="template_command", metavar="COMMAND", required=True)
    create = command(tsub, "create", cmd_create, "boot a guest to its checkpoint and keep "
                     "its snapshot as template NAME",
                     description="Boot a guest with create's image and VM options to the "
                                 "checkpoint before anything instance-specific, snapshot it "
                                 "into $KINDLING_HOME/templates/NAME and end it.  Clones: "
                                 "`kindling create --template NAME -- CMD`.")
    create.add_argument("template_name", metavar="NAME")
    create.add_argument("--volume-slots", type=int, default=0, metavar="N",
                        help="room for N --volume in each clone (default: 0)")
    create.add_argument("--rebuild", action="store_true",
                        help="make it again if it exists (after a kernel, initrd, rootfs or "
                             "QEMU change made it stale)")
    memory = create.add_mutually_exclusive_group()
    memory.add_argument("--shared-memory", dest="shared_memory", action="store_true", default=True,
                        help="(the default) keep the guest RAM in a file that every clone maps "
                             "privately (copy on write: clones share the pages they do not write)")
    memory.add_argument("--private-memory", dest="shared_memory", action="store_false",
                        help="keep the guest RAM in the snapshot: each clone reads all of it")
    create.add_argument("--net", action="store_true",
                        help="clones get eth0 in their own network namespace (as create --net)")
    options.add_arguments(create, "create", only_groups=("image", "virtual machine"))
    command(tsub, "list", cmd_list, "list the templates", aliases=["ls"])
    rm = command(tsub, "rm", cmd_rm, "remove a template (its clones are not affected)")
    rm.add_argument("template_name", metavar="NAME")



