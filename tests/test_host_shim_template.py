"""Templates on the host alone (host_shim/template.py, host_shim/clone.py): the record,
staleness, refusals, option conflicts, a corrupt snapshot.  Real guests:
tests/test_vm_template.py."""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from host_shim import clone, options, qemu, template
from host_shim.errors import KindlingError
from host_shim.instance import Instance
from initsys import checkpoint


def made(home: Path, name="t", **overrides) -> template.Template:
    """A template on disk as template.create leaves it (without booting anything)."""
    tdir = template.templates_dir(home) / name
    (tdir / "snapshot").mkdir(parents=True)
    (tdir / "snapshot" / "vmstate").write_bytes(b"x" * 100)
    (tdir / "snapshot" / "record.json").write_text("{}")
    images = {}
    for n in template.IMAGES:
        (tdir / n).write_bytes(n.encode() * 10)
        images[n] = template.digest(tdir / n)
    opts = options.to_json(options.checked(options.CreateOptions(accel="tcg", memory=256)))
    t = template.Template(name=name, id="abcdef012345", options=opts, volume_slots=1,
                          digests=images, qemu_version="7.2.0", machine="microvm,rtc=on",
                          vmstate_size=100, build_seconds=12.0, checkpoint_seconds=10.0,
                          created_at=1, dir=tdir)
    obj = {**t.to_json(), **overrides}
    del obj["dir"]
    (tdir / template.RECORD).write_text(json.dumps(obj))
    return t


def test_a_template_is_loaded_as_recorded(tmp_path):
    t = made(tmp_path)
    assert template.load(tmp_path, "t") == t
    assert [x.name for x in template.list_all(tmp_path)] == ["t"]


def test_a_missing_template_is_named(tmp_path):
    with pytest.raises(KindlingError, match="no template named 'nope'"):
        template.load(tmp_path, "nope")


def test_a_half_made_template_is_not_listed(tmp_path):
    made(tmp_path)
    (template.templates_dir(tmp_path) / "half" / "snapshot").mkdir(parents=True)  # no record
    assert [x.name for x in template.list_all(tmp_path)] == ["t"]


@pytest.mark.parametrize("damage, says", [
    (lambda t: (t.dir / template.RECORD).write_text("{not json"), "template.json"),
    (lambda t: (t.dir / "snapshot" / "vmstate").write_bytes(b"x" * 99), "is 99 bytes, its record says 100"),
    (lambda t: (t.dir / "snapshot" / "vmstate").unlink(), "is missing"),
])
def test_a_corrupt_template_is_refused_clearly(tmp_path, damage, says):
    damage(made(tmp_path))
    with pytest.raises(KindlingError, match="template t is corrupt") as e:
        template.load(tmp_path, "t")
    assert says in e.value.message and "--rebuild" in e.value.hint


def test_a_record_of_another_format_is_corrupt(tmp_path):
    made(tmp_path, format=99)
    with pytest.raises(KindlingError, match="format 99, expected 1"):
        template.load(tmp_path, "t")


def artifacts_at(folder: Path):
    return SimpleNamespace(**{n: folder / n for n in template.IMAGES})


def test_the_same_images_are_fresh_without_reading_them(tmp_path, monkeypatch):
    t = made(tmp_path)
    monkeypatch.setattr(template, "digest", lambda path: pytest.fail("hashed a hard link"))
    assert template.changed_images(t, artifacts_at(t.dir)) == []


def test_a_copy_with_the_same_content_is_fresh(tmp_path):
    t = made(tmp_path)
    copies = tmp_path / "copies"
    copies.mkdir()
    for n in template.IMAGES:
        (copies / n).write_bytes((t.dir / n).read_bytes())
    assert template.changed_images(t, artifacts_at(copies)) == []


def test_a_changed_initrd_makes_the_template_stale_naming_it(tmp_path):
    t = made(tmp_path)
    copies = tmp_path / "copies"
    copies.mkdir()
    for n in template.IMAGES:
        (copies / n).write_bytes((t.dir / n).read_bytes())
    (copies / "initrd").write_bytes(b"INITRD" * 10)        # same size, other bytes
    with pytest.raises(KindlingError, match="template t is stale: its initrd changed") as e:
        clone.check_fresh(t, artifacts_at(copies))
    assert e.value.exit_code in (None, 125) and "--rebuild" in e.value.hint


def clone_opts(**given):
    return options.checked(options.CreateOptions(**{"command": ("true",), "accel": "tcg", **given}))


def test_a_clone_takes_the_templates_vm_options(tmp_path):
    t = made(tmp_path)
    opts = clone.options_for(t, clone_opts(env={"A": "1"}))
    assert opts.memory == 256 and opts.env == (("A", "1"),) and opts.command == ("true",)


@pytest.mark.parametrize("given, flag", [({"memory": 1024}, "--memory"), ({"net": True}, "--net"),
                                         ({"cpus": 1}, "--cpus"), ({"agent": "none"}, "--agent")])
def test_a_clone_option_that_conflicts_with_the_template_is_refused(tmp_path, given, flag):
    t = made(tmp_path)
    with pytest.raises(KindlingError, match=f"^{flag} .*template t was made with {flag}"):
        clone.options_for(t, clone_opts(**given))


def test_an_option_left_out_takes_the_templates_value(tmp_path, monkeypatch):
    """A template made with --accel tcg clones without --accel (its default, `auto`)."""
    monkeypatch.delenv("KINDLING_ACCEL", raising=False)
    t = made(tmp_path)
    opts = clone.options_for(t, options.checked(options.CreateOptions(command=("true",))))
    assert opts.accel == "tcg"
    with pytest.raises(KindlingError, match="^--accel kvm: template t was made with --accel tcg"):
        clone.options_for(t, clone_opts(accel="kvm"))


def test_the_templates_own_value_given_again_is_fine(tmp_path):
    t = made(tmp_path)
    assert clone.options_for(t, clone_opts(memory=256)).memory == 256


def test_more_volumes_than_slots_is_refused_and_unused_slots_are_filled(tmp_path):
    t = made(tmp_path)
    instance = Instance("0123456789ab", tmp_path / "i")
    instance.dir.mkdir()
    base = tuple(qemu.Disk(f"/d{n}", s) for n, s in enumerate(("rootfs", "overlay", "config")))
    filled = clone.disks_for(t, instance, base)
    assert [d.serial for d in filled] == ["rootfs", "overlay", "config", "unused-0"]
    assert os.path.getsize(filled[-1].path) == template.PLACEHOLDER_SIZE
    two = base + (qemu.Disk("/v0", "vol-0"), qemu.Disk("/v1", "vol-1"))
    with pytest.raises(KindlingError, match="2 --volume given, but template t has 1 volume slot$"):
        clone.disks_for(t, instance, two)


def test_the_resume_line_is_what_pid_1_parses():
    from image_build.disks import config_bytes
    config = config_bytes({"cmd": ["/bin/echo", "é \n"], "env": {"A": "1 2"}})
    time_ns, entropy, got = checkpoint.parse(clone.resume_line(config).decode())
    assert len(entropy) == clone.ENTROPY_BYTES and abs(time_ns - __import__("time").time_ns()) < 10**9
    assert got == config
    assert checkpoint.parse(clone.resume_line(config).decode())[1] != entropy


def test_a_config_too_large_for_the_resume_line_is_refused_before_qemu(monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_LINE", 300)
    with pytest.raises(KindlingError, match="config.json: 300 bytes, too large for a template's clone"):
        clone.resume_line(b"x" * 300)


@pytest.mark.parametrize("given, flag", [({"command": ("sh",)}, "the command"),
                                         ({"volumes": ("/tmp/x.img:/data",)}, "--volume"),
                                         ({"agent": "vsock"}, "--agent vsock")])
def test_template_create_refuses_what_a_template_cannot_have(tmp_path, given, flag):
    with pytest.raises(KindlingError, match=flag):
        trio.run(lambda: template.create("t", options.CreateOptions(**given), tmp_path))
    assert not template.templates_dir(tmp_path).joinpath("t").exists()


def test_an_existing_template_needs_rebuild(tmp_path):
    made(tmp_path)
    with pytest.raises(KindlingError, match="template t exists") as e:
        trio.run(lambda: template.create("t", options.CreateOptions(), tmp_path))
    assert "--rebuild" in e.value.hint
    assert template.load(tmp_path, "t").name == "t"      # untouched


def test_a_failed_template_create_leaves_nothing(tmp_path, monkeypatch):
    async def fails(*args):
        raise KindlingError("the boot failed")
    monkeypatch.setattr(template, "_make", fails)
    with pytest.raises(KindlingError, match="the boot failed"):
        trio.run(lambda: template.create("t", options.CreateOptions(), tmp_path))
    assert not (template.templates_dir(tmp_path) / "t").exists()


def test_rm_removes_and_names_a_missing_one(tmp_path):
    made(tmp_path)
    template.remove(tmp_path, "t")
    assert template.list_all(tmp_path) == []
    with pytest.raises(KindlingError, match="no template named 't'"):
        template.remove(tmp_path, "t")


def test_shared_memory_puts_the_guest_ram_in_a_file_shared_or_private():
    argv = ["ip", "netns", "exec", "ns", "qemu", "-machine", "microvm,rtc=on", "-m", "512", "-smp", "2"]
    shared = template.with_memory_file(argv, Path("/t/ram,x"), share=True)
    assert shared[:7] == ["ip", "netns", "exec", "ns", "qemu", "-machine",
                          "microvm,rtc=on,memory-backend=ram0"]
    assert shared[7:9] == ["-object", "memory-backend-file,id=ram0,size=512M,mem-path=/t/ram,,x,share=on"]
    assert shared[9:] == ["-m", "512", "-smp", "2"]
    assert template.with_memory_file(argv, Path("/t/ram"), share=False)[8].endswith(",share=off")


def test_a_shared_memory_record_loads_and_an_old_one_defaults_to_private(tmp_path):
    made(tmp_path, "new", shared_memory=True)
    made(tmp_path, "old")
    assert template.load(tmp_path, "new").shared_memory is True
    assert template.load(tmp_path, "new").ram == template.templates_dir(tmp_path) / "new" / "ram"
    assert template.load(tmp_path, "old").shared_memory is False


def test_a_clone_maps_its_own_link_of_the_templates_ram_which_outlives_the_template(tmp_path):
    t = made(tmp_path, "t", shared_memory=True)
    t.ram.write_bytes(b"R" * 4096)
    instance = Instance("0123456789ab", tmp_path / "i")
    instance.dir.mkdir()
    mine = template.clone_ram(instance, t)
    assert mine == instance.dir / "ram" and os.path.samefile(mine, t.ram)   # one inode: one page cache
    assert template.clone_ram(instance, t) == mine                          # a later start: the same
    template.remove(tmp_path, "t")
    assert mine.read_bytes() == b"R" * 4096          # rm (or --rebuild) unlinks only the template's name


def test_template_create_shares_memory_unless_private_memory_is_asked():
    from host_shim import cli
    parse = cli.build_parser().parse_args
    assert parse(["template", "create", "x"]).shared_memory is True
    assert parse(["template", "create", "x", "--shared-memory"]).shared_memory is True
    assert parse(["template", "create", "x", "--private-memory"]).shared_memory is False
