"""The Python API without a VM: every new method checks its arguments and says which one
is wrong (before touching any instance), errors are KindlingErrors (also from inside a
nursery), and the volume operations work on a real volumes folder."""

import pytest
import trio

from host_shim import Kindling, KindlingError, NoSuchInstance, api_args, sizes, volumes
from host_shim.volumes import VolumeInfo
from host_shim.instance import Instance
from host_shim.metadata import Metadata, save


@pytest.fixture
def k(tmp_path):
    return Kindling(home=tmp_path)


def raises(message):
    return pytest.raises(KindlingError, match=message)


@pytest.mark.parametrize("kwargs, message", [
    (dict(argv="ls -l"), r"argv: expected a list of arguments"),
    (dict(argv=[]), r"argv: expected a command, got an empty list"),
    (dict(argv=["ls", 3]), r"argv: every argument must be a str, got 3"),
    (dict(env=["A=1"]), r"env: expected a dict"),
    (dict(env={"A=B": "1"}), r"env: 'A=B' is not a variable name"),
    (dict(env={"A": 1}), r"env\['A'\]: expected a str, got 1"),
    (dict(workdir="tmp"), r"workdir: expected an absolute path in the guest"),
    (dict(user=-1), r"user: expected a uid"),
    (dict(user=True), r"user: expected a uid"),
    (dict(stdin=3), r"stdin: expected bytes or str, got int"),
    (dict(timeout=0), r"timeout: expected a positive number of seconds, got 0"),
    (dict(timeout="5"), r"timeout: expected a positive number of seconds"),
])
def test_exec_checks_its_arguments_first(k, kwargs, message):
    kwargs = {"argv": ["true"]} | kwargs
    with raises(message):                # not NoSuchInstance: the arguments come first
        k.exec("nosuchvm", **kwargs)


def test_exec_stream_callbacks_must_be_functions(k):
    with raises(r"on_stdout: expected a function"):
        k.exec_stream("nosuchvm", ["true"], on_stdout="out.txt")
    with raises(r"on_stderr: expected a function"):
        k.exec_stream("nosuchvm", ["true"], on_stderr=b"")


def test_exec_with_good_arguments_gets_to_the_instance(k):
    with pytest.raises(NoSuchInstance):
        k.exec("nosuchvm", ["true"], env={"A": "1"}, user="0:0", stdin="x", timeout=1)


def test_copy_and_stat_check_paths(k, tmp_path):
    with raises(r"remote: expected an absolute path in the guest"):
        k.copy_in("vm", tmp_path, "relative/dir")
    with raises(r"local: expected a local path"):
        k.copy_out("vm", "/etc", None)
    with raises(r"path: expected an absolute path in the guest .* got 'etc'"):
        k.stat("vm", "etc")
    with raises(r"cp: .*missing: no such file or directory"):
        k.copy_in("vm", tmp_path / "missing", "/x")
    with raises(r"exactly one of SRC and DST must be VM:/path"):
        k.cp(tmp_path, tmp_path / "b")
    with pytest.raises(NoSuchInstance):
        k.cp(tmp_path, "vm:/tmp/x")


def test_logs_on_line_must_be_a_function(k):
    with raises(r"on_line: expected a function"):
        k.logs("vm", on_line=[])


@pytest.mark.parametrize("size, message", [
    (0, r"size 0: must be more than 0"),
    (True, r"size True: expected a size such as 512M or 1G"),
    (1.5, r"size 1.5: expected a size such as 512M or 1G"),
    ("64Q", r"size '64Q': expected a size such as 512M or 1G"),
])
def test_volume_create_checks_the_size(k, size, message):
    with raises(message):
        k.volume_create("data", size)
    assert k.volume_list() == []


def test_volume_create_list_rm(k, tmp_path):
    created = k.volume_create("data", "8M")
    assert created == VolumeInfo("data", tmp_path / "volumes" / "data.img", 8 << 20, ())
    k.volume_create("a-first", 8 << 20)
    assert [v.name for v in k.volume_list()] == ["a-first", "data"]
    with raises(r"volume 'data' already exists"):
        k.volume_create("data", "8M")
    k.volume_rm("data")
    assert [v.name for v in k.volume_list()] == ["a-first"]
    with raises(r"no such volume: data"):
        k.volume_rm("data")
    with raises(r"invalid volume name '../x'"):
        k.volume_rm("../x")
    with raises(r"name: expected a volume name"):
        k.volume_rm(None)


def test_volume_rm_refuses_a_volume_in_use(k, tmp_path):
    image = k.volume_create("data", "8M").path
    instance = Instance("0123456789ab", tmp_path / "instances" / "0123456789ab")
    instance.dir.mkdir(parents=True)
    save(instance, Metadata(id=instance.id, name="web", created_at=0, command=["sh"], config={},
                            agent_skipped=False, argv=["qemu", "-drive", f"file={image},if=none"],
                            accel="tcg", log_max_bytes=1 << 20, log_keep=3))
    with raises(r"volume data is in use by instance web"):
        k.volume_rm("data")
    assert image.exists()


def test_run_checks_its_options(k):
    with raises(r"unknown option memory_mib"):
        k.run(["true"], memory_mib=512)
    with raises(r"the command 'echo hi': expected a list of strings"):
        k.run("echo hi")
    with raises(r"--timeout -1: must be positive"):
        k.run(["true"], timeout=-1)
    with raises(r"--volume 'nosuch:/data': volume image .* not found"):
        k.run(["true"], volumes=["nosuch:/data"])


def test_run_options_are_those_of_the_table():
    import inspect
    params = inspect.signature(Kindling.run).parameters
    assert {"name", "accel", "env", "memory", "cpus", "volumes", "net", "agent", "timeout",
            "boot_timeout", "keep"} <= set(params)


def test_a_kindling_error_inside_a_nursery_comes_out_as_itself():
    async def fails():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 0)
            sizes.parse_size("lots", "--size")
    with raises(r"--size 'lots': expected a size"):
        Kindling._call(fails)


def test_docs_api_md_documents_every_public_method():
    from pathlib import Path
    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    public = [name for name in vars(Kindling) if not name.startswith("_")]
    assert {"exec", "exec_stream", "cp", "stat", "volume_rm", "run", "logs"} <= set(public)
    missing = [name for name in public if f"### `{name}(" not in text]
    assert missing == []


def test_the_documented_example_is_valid_python():
    from tests.test_vm_api import example_program
    compile(example_program(), "docs/api.md", "exec")


def test_run_builds_the_runners_options_and_captures_its_output(k, monkeypatch, capsys):
    from host_shim import runner
    seen = {}

    async def fake_run_async(opts, home, emit=None):
        seen.update(opts=opts, home=home)
        print("program output")
        print("kindling: Running (1.00 s)", file=__import__("sys").stderr)
        return 7

    monkeypatch.setattr(runner, "run_async", fake_run_async)
    monkeypatch.setenv("KINDLING_ACCEL", "tcg")
    result = k.run(["sh", "-c", "exit 7"], timeout=30, env={"A": "1"}, memory="256M",
                   name="once")
    assert (result.code, result.output, result.messages) == (
        7, "program output\n", "kindling: Running (1.00 s)\n")
    assert capsys.readouterr() == ("", "")          # nothing leaked to our own stdout/stderr
    opts = seen["opts"]
    assert isinstance(opts, runner.RunOptions) and seen["home"] == k.home
    assert (opts.command, opts.env, opts.memory, opts.name, opts.timeout, opts.accel) == (
        ("sh", "-c", "exit 7"), (("A", "1"),), 256, "once", 30.0, "tcg")
