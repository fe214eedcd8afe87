"""host_shim/run.py (image_build/run.py's subprocess helper, errors as KindlingError) and
host_shim/qmp.py (the QMP client)."""

import shutil
import signal
import subprocess

import pytest
import trio

from host_shim import qmp, run
from host_shim.errors import KindlingError


def test_run_captures_output():
    result = run.run(["sh", "-c", "echo out; echo err >&2"], timeout=10, stdout=run.PIPE,
                     stderr=run.PIPE)
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")


def test_run_stdin_is_devnull_by_default():
    assert run.run(["cat"], timeout=10, stdout=run.PIPE).stdout == ""


def test_run_needs_a_timeout_at_the_call_site():
    with pytest.raises(TypeError, match="timeout"):
        run.run(["true"])


def test_run_refuses_a_shell_string():
    with pytest.raises(TypeError):
        run.run("echo hi", timeout=10)


def test_run_not_found_names_the_command():
    with pytest.raises(KindlingError) as info:
        run.run(["/nonexistent/prog", "--flag", "a b"], timeout=10)
    assert info.value.message == "/nonexistent/prog: not found"
    assert info.value.hint == "the command was: /nonexistent/prog --flag 'a b'"


def test_run_failure_shows_command_and_stderr():
    with pytest.raises(KindlingError) as info:
        run.run(["sh", "-c", "echo broken >&2; exit 3"], timeout=10, stderr=run.PIPE)
    assert info.value.message == "sh: failed with exit code 3"
    assert info.value.hint == "the command was: sh -c 'echo broken >&2; exit 3'\n    broken"


def test_run_killed_by_signal():
    with pytest.raises(KindlingError, match=r"killed by signal 9 \(SIGKILL\)"):
        run.run(["sh", "-c", "kill -9 $$"], timeout=10)


def test_run_timeout():
    with pytest.raises(KindlingError, match="sleep: timed out after 0.2 s"):
        run.run(["sleep", "5"], timeout=0.2)


def test_run_check_false_returns_status():
    assert run.run(["false"], timeout=10, check=False).returncode == 1


def test_describe_returncode():
    assert run.describe_returncode(0) == "exit code 0"
    assert run.describe_returncode(3) == "exit code 3"
    assert run.describe_returncode(-15) == "killed by signal 15 (SIGTERM)"
    assert run.describe_returncode(-200) == "killed by signal 200 (SIG200)"


async def test_start_and_stop_escalates_to_sigkill():
    with trio.fail_after(10):
        process = await run.start(["sh", "-c", "trap '' TERM; echo ready; sleep 30"],
                                  stdout=run.PIPE, start_new_session=True)
        assert await process.stdout.receive_some() == b"ready\n"
        await run.stop(process, grace=0.3)
    assert process.returncode == -signal.SIGKILL


async def test_start_not_found():
    with pytest.raises(KindlingError, match="/nonexistent/qemu: not found"):
        await run.start(["/nonexistent/qemu"])


# --- QMP, against a real QEMU (`-machine none`: no guest, starts in ~50 ms) ---------

async def test_qmp_client_against_qemu(tmp_path):
    sock = tmp_path / "qmp.sock"
    assert shutil.which("qemu-system-x86_64"), "QEMU missing: run `make test` (it installs it)"
    qemu = await trio.lowlevel.open_process(
        ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S",
         "-qmp", f"unix:{sock},server=on,wait=off"], stdin=subprocess.DEVNULL)
    try:
        with trio.fail_after(20):
            while not sock.exists():
                await trio.sleep(0.01)
            async with await qmp.QMPClient.connect(sock) as client:
                assert (await client.execute("query-status"))["status"] == "prelaunch"
                with pytest.raises(qmp.QMPError, match="has not been found"):
                    await client.execute("bogus")
            assert await qmp.query_status(sock) == "prelaunch"
            await qmp.execute(sock, "cont")
            assert await qmp.query_status(sock) == "running"
            assert await qmp.quit(sock) is True
            assert await qemu.wait() == 0
    finally:
        if qemu.returncode is None:
            qemu.kill()
            await qemu.wait()


async def test_qmp_without_server(tmp_path):
    assert await qmp.quit(tmp_path / "missing.sock") is False
    with pytest.raises(qmp.QMPError, match="cannot connect to QMP socket .*missing.sock: No such file"):
        await qmp.execute(tmp_path / "missing.sock", "query-status")
