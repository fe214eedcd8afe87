"""host_shim/run.py (the subprocess helper) and host_shim/qmp.py (the QMP client)."""

import json
import signal

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


def test_run_refuses_a_shell_string():
    with pytest.raises(TypeError):
        run.run("echo hi", timeout=10)


def test_run_not_found_names_the_command():
    with pytest.raises(KindlingError) as info:
        run.run(["/nonexistent/prog", "--flag", "a b"], timeout=10)
    assert info.value.message == "command not found: /nonexistent/prog"
    assert "/nonexistent/prog --flag 'a b'" in info.value.hint


def test_run_failure_shows_command_and_stderr():
    with pytest.raises(KindlingError) as info:
        run.run(["sh", "-c", "echo broken >&2; exit 3"], timeout=10, stderr=run.PIPE)
    assert "exited with status 3" in info.value.message
    assert "sh -c 'echo broken >&2; exit 3'" in info.value.message
    assert "broken" in info.value.message


def test_run_killed_by_signal():
    with pytest.raises(KindlingError, match=r"killed by signal 9 \(SIGKILL\)"):
        run.run(["sh", "-c", "kill -9 $$"], timeout=10)


def test_run_timeout():
    with pytest.raises(KindlingError, match="timed out after 0.2 s: sleep 5"):
        run.run(["sleep", "5"], timeout=0.2)


def test_run_check_false_returns_status():
    assert run.run(["false"], timeout=10, check=False).returncode == 1


def test_describe_returncode():
    assert run.describe_returncode(0) == "exited with status 0"
    assert run.describe_returncode(-15) == "killed by signal 15 (SIGTERM)"
    assert run.describe_returncode(-200) == "killed by signal 200"


async def test_start_and_stop_escalates_to_sigkill():
    with trio.fail_after(10):
        process = await run.start(["sh", "-c", "trap '' TERM; echo ready; sleep 30"],
                                  stdout=run.PIPE, start_new_session=True)
        assert await process.stdout.receive_some() == b"ready\n"
        await run.stop(process, grace=0.3)
    assert process.returncode == -signal.SIGKILL


async def test_start_not_found():
    with pytest.raises(KindlingError, match="command not found: /nonexistent/qemu"):
        await run.start(["/nonexistent/qemu"])


# --- QMP ---------------------------------------------------------------------

async def fake_qmp_server(listener, log):
    stream = await listener.accept()
    async with stream:
        await stream.send_all(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
        buffer = b""
        while True:
            chunk = await stream.receive_some()
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = json.loads(line)["execute"]
                log.append(command)
                if command == "quit":
                    await stream.send_all(b'{"event": "SHUTDOWN", "data": {}}\r\n'
                                          b'{"return": {}}\r\n')
                    return
                if command == "bogus":
                    await stream.send_all(b'{"error": {"class": "CommandNotFound", '
                                          b'"desc": "The command bogus has not been found"}}\r\n')
                else:
                    await stream.send_all(b'{"return": {"status": "running"}}\r\n')


async def test_qmp_client_against_fake_server(tmp_path):
    path = str(tmp_path / "qmp.sock")
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    await sock.bind(path)
    sock.listen()
    listener = trio.SocketListener(sock)
    log = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake_qmp_server, listener, log)
            async with await qmp.QMPClient.connect(path) as client:
                assert await client.execute("query-status") == {"status": "running"}
                with pytest.raises(qmp.QMPError, match="has not been found"):
                    await client.execute("bogus")
                await client.execute("quit")
    assert log == ["qmp_capabilities", "query-status", "bogus", "quit"]


async def test_qmp_quit_without_server(tmp_path):
    assert await qmp.quit(tmp_path / "missing.sock") is False
