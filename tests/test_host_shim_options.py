"""The settings table (host_shim/options.py): the CLI, the Python API and the metadata each
know every option; sizes take units; and the misbehaviours of issue 16, without a VM."""

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from host_shim import cli, metadata, options, prepare, sizes, volumes
from host_shim.api import Kindling
from host_shim.errors import KindlingError
from host_shim.instance import Instance
from host_shim.metadata import Metadata
from host_shim.state import State



def subparser(command: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


# --- the table: one definition, known everywhere ---------------------------------------------

@pytest.mark.parametrize("command, cls", [("create", options.CreateOptions),
                                          ("run", options.RunOptions)])
def test_the_cli_knows_every_option(command, cls):
    actions = {a.dest: a for a in subparser(command)._actions}
    for opt in options.for_command(command):
        assert opt.name in actions, f"{command} has no argument for {opt.name}"
        assert set(opt.flags) <= set(actions[opt.name].option_strings)
    assert {f.name for f in dataclasses.fields(cls)} == {o.name for o in options.for_command(command)}
    assert not [o.name for o in options.OPTIONS if o.run_only and o.name in
                {a.dest for a in subparser("create")._actions}]


def test_the_api_knows_every_create_option():
    params = inspect.signature(Kindling.create).parameters
    for opt in options.for_command("create"):
        assert opt.name in params, f"Kindling.create has no keyword {opt.name}"
        assert params[opt.name].default == opt.default
    assert set(params) - {"self"} == {o.name for o in options.for_command("create")}


def test_the_metadata_keeps_every_option(tmp_path):
    opts = options.make(options.CreateOptions, {"command": ["true"], "memory": "1G",
                                                "env": {"A": "1"}}, tmp_path)
    kept = options.to_json(opts)
    assert set(kept) == {o.name for o in options.for_command("create")}
    meta = Metadata(id="0123456789ab", name="x", created_at=0, command=["true"], config={},
                    agent_skipped=True, argv=[], accel="tcg", log_max_bytes=1 << 20,
                    log_keep=3, options=kept)
    instance = Instance("0123456789ab", tmp_path)
    metadata.save(instance, meta)
    assert metadata.load(instance).options == kept
    assert kept["memory"] == 1024 and kept["env"] == [["A", "1"]]


def test_every_option_says_where_it_goes_and_has_help():
    for opt in options.OPTIONS:
        assert opt.goes_to and set(opt.goes_to) <= set(options.DESTINATIONS), opt.name
        assert opt.help and (opt.flags or opt.action == "command"), opt.name


def test_cli_and_api_make_the_same_options(home):
    args = cli.build_parser().parse_args(
        ["create", "--memory", "1G", "-e", "A=1", "--log-max-size", "8K", "--cpus", "3",
         "--no-headers", "--agent", "none", "--", "sh", "-c", "true"])
    from_cli = options.from_args(options.CreateOptions, args, home)
    from_api = options.make(options.CreateOptions, dict(
        command=["sh", "-c", "true"], memory=1024, env={"A": "1"}, log_max_size=8192, cpus=3,
        headers=False, agent="none"), home)
    assert from_cli == from_api
    assert (from_cli.memory, from_cli.log_max_size) == (1024, 8 << 10)


def test_the_api_rejects_an_unknown_option_by_name(home):
    with pytest.raises(KindlingError, match="unknown option memory_mib"):
        Kindling(home).create(["true"], memory_mib=512)


def test_options_built_directly_are_checked_too():
    """Benchmarks and tests build CreateOptions themselves; lifecycle.create checks them."""
    with pytest.raises(KindlingError, match="--memory 32: at least 64M"):
        options.checked(options.CreateOptions(command=("true",), memory=32))
    assert options.checked(options.CreateOptions(memory="2G")).memory == 2048


# --- sizes take units ----------------------------------------------------------------------

@pytest.mark.parametrize("text, mib", [("512", 512), ("512M", 512), ("1G", 1024), ("1GiB", 1024),
                                       ("65536K", 64)])
def test_memory_takes_units(text, mib):
    """A bare number is MiB (as QEMU's -m), as --help says."""
    args = cli.build_parser().parse_args(["run", "--memory", text, "--", "true"])
    assert options.from_args(options.RunOptions, args, None).memory == mib


def test_help_says_what_a_bare_number_means(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "a bare number is MiB" in out and "a bare number is bytes" in out
    with pytest.raises(SystemExit):
        cli.main(["volume", "create", "--help"])
    assert "a bare number is bytes" in " ".join(capsys.readouterr().out.split())


def test_memory_with_a_unit_is_accepted_by_run(home, capsys, monkeypatch):
    """Issue 16: `run --memory 1G` exited 2 (argparse wanted a bare number)."""
    seen = []
    monkeypatch.setattr(cli.runner, "run", lambda opts, home=None, emit=None: seen.append(opts) or 0)
    assert cli.main(["run", "--memory", "1G", "--", "true"]) == 0
    assert seen[0].memory == 1024


# --- the misbehaviours of issue 16 -----------------------------------------------------------

def test_a_usage_error_exits_125_and_names_the_flag(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--memory"])
    assert info.value.code == 125
    assert "--memory" in capsys.readouterr().err


def test_a_too_small_volume_is_a_clear_error(home, capsys):
    """Issue 16: `volume create v --size 100` printed "internal error: BuildError"."""
    assert cli.main(["volume", "create", "v", "--size", "100"]) == 125
    err = capsys.readouterr().err
    assert "kindling: error: --size 100: a volume needs at least 1M (1048576 bytes)" in err
    assert "internal error" not in err
    assert not (home / "volumes" / "v.img").exists()


@pytest.mark.parametrize("spec", ["data:/data", "./data.img:/data", "/no/such.img:/data"])
def test_the_volume_hint_suggests_a_command_that_works(home, capsys, spec):
    """Issue 16: the hint for a missing --volume suggested `volume create ./data.img`,
    which then failed (not a volume name)."""
    assert cli.main(["create", "--volume", spec, "--", "true"]) == 125
    err = capsys.readouterr().err
    assert "volume image" in err and "not found" in err
    suggested = re.search(r"`kindling (volume create [^`]*)`", err)
    if suggested:
        assert cli.main(suggested.group(1).split()) == 0, capsys.readouterr().err
        assert (home / "volumes" / "data.img").is_file()
    else:
        assert "volume list" in err


@pytest.mark.parametrize("args, prefix", [(["stat", "nocolon"], "stat: "),
                                          (["cp", "a", "b"], "cp a b: ")])
def test_agent_errors_say_kindling_once(capsys, home, args, prefix):
    """Issue 16: `kindling: error: kindling stat: ...` doubled the prefix."""
    assert cli.main(args) == 125
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"kindling: error: {prefix}")
    assert first.count("kindling") == 1


@pytest.mark.parametrize("command", ["run", "create"])
def test_no_command_hints_the_command_used(capsys, home, command):
    """Issue 16: `run` without a command hinted `kindling create`."""
    assert cli.main([command]) == 125
    err = capsys.readouterr().err
    assert f"hint: kindling {command} [OPTIONS] -- CMD [ARG...]" in err
    assert f"kindling {command} --base debian" in err
    assert ("kindling create" in err) == (command == "create")


def test_build_errors_are_kindling_errors(capsys, tmp_path):
    assert cli.main(["build", "--rootfs", str(tmp_path / "missing"), "--out",
                     str(tmp_path / "o")]) == 125
    err = capsys.readouterr().err
    assert err.startswith("kindling: error: build failed: ") and "internal error" not in err


# --- volume list / rm ---------------------------------------------------------------------

def instance_using(home: Path, name: str, image: Path) -> None:
    instance = Instance.create(home)
    meta = Metadata(id=instance.id, name=name, created_at=0, command=["true"], config={},
                    agent_skipped=True, argv=[], accel="tcg", log_max_bytes=1 << 20, log_keep=3,
                    options={"volumes": [{"image": str(image), "path": "/d", "mode": "rw"}]})
    meta.record_state(State.STOPPED)
    metadata.save(instance, meta)


def test_volume_list_and_rm(home, capsys):
    for name in ("b", "a"):
        volumes.create(home, name, "1M")
    assert [v.name for v in volumes.list_volumes(home)] == ["a", "b"]
    assert cli.main(["volume", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "SIZE", "USED", "BY", "PATH"]
    assert [line.split()[:3] for line in out[1:]] == [["a", "1M", "-"], ["b", "1M", "-"]]
    assert cli.main(["volume", "rm", "a"]) == 0
    assert [v.name for v in volumes.list_volumes(home)] == ["b"]
    assert cli.main(["volume", "rm", "a"]) == 125
    assert "no such volume: a" in capsys.readouterr().err


def test_volume_rm_refuses_a_volume_in_use(home, capsys):
    image = volumes.create(home, "data", "1M").path
    instance_using(home, "web", image)
    instance_using(home, "db", image)
    assert sorted(volumes.info(home, "data").used_by) == ["db", "web"]
    assert cli.main(["volume", "rm", "data"]) == 125
    err = capsys.readouterr().err
    assert "volume data is in use by instances" in err and "web" in err and "db" in err
    assert "hint: delete them first: kindling delete" in err
    assert image.exists()
    for ref in ("web", "db"):
        metadata.resolve(home, ref)[0].remove()
    assert volumes.remove(home, "data").name == "data" and not image.exists()


def test_an_instance_made_before_options_were_kept_counts_by_its_argv(home):
    image = volumes.create(home, "old", "1M").path
    instance = Instance.create(home)
    meta = Metadata(id=instance.id, name="old-vm", created_at=0, command=["true"], config={},
                    agent_skipped=True, argv=["qemu", "-drive", f"file={image},if=none,id=disk3"],
                    accel="tcg", log_max_bytes=1 << 20, log_keep=3)
    metadata.save(instance, meta)
    assert volumes.info(home, "old").used_by == ("old-vm",)
    with pytest.raises(KindlingError, match="volume old is in use by instance old-vm"):
        volumes.remove(home, "old")


def test_a_relative_volume_path_is_kept_absolute(home, monkeypatch, tmp_path):
    image = volumes.create(home, "rel", "1M").path
    monkeypatch.chdir(image.parent)
    opts = options.make(options.CreateOptions, {"command": ["true"],
                                                "volumes": ["./rel.img:/d"]}, home)
    assert options.to_json(opts)["volumes"][0]["image"] == str(image)


def test_volume_specs_reach_the_metadata(home):
    image = volumes.create(home, "data", "1M").path
    opts = options.make(options.CreateOptions, {"command": ["true"],
                                                "volumes": ["data:/data:ro"]}, home)
    assert options.to_json(opts)["volumes"] == [{"image": str(image), "path": "/data",
                                                 "mode": "ro"}]
    assert prepare.make_config(opts)["volume_mounts"][0]["path"] == "/data"


def test_sizes_human():
    assert [sizes.human(n) for n in (1 << 20, 3 << 30, 4096, 1000)] == ["1M", "3G", "4K", "1000"]
