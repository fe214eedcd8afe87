"""The boot deadline (issue 15 §2, "nothing waits forever"), with a real kernel under
QEMU/TCG and an initrd whose /init reports one boot stage and then hangs -- the shape of
the early-boot hang issue 15 describes.  `kindling run --boot-timeout` and `kindling wait
--for running --timeout` both give up with exit 125, name the last stage and marker the
guest printed, and leave no VM behind."""

import json

import pytest

from image_build import busybox, cpio
from image_build.cache import default_cache_dir
from tests.test_host_shim_lifecycle_vm import eventually, home, kindling, kindling_json  # noqa: F401
from tests.vm import kindling_run, qemu_pids_using

pytestmark = pytest.mark.vm

STAGE = "KINDLING-STAGE name=mounts start=0.100000 end=0.200000"
PROGRESS = "last boot stage: mounts; last marker: KINDLING-STAGE name=mounts"
HANGING_INIT = f'#!/bin/sh\necho "{STAGE}"\nexec /bin/sleep 3600\n'


@pytest.fixture(scope="module")
def hanging_initrd(tmp_path_factory):
    """A plain newc initrd: busybox sh prints one stage line, then sleeps forever."""
    _, binary = busybox.fetch(default_cache_dir())
    path = tmp_path_factory.mktemp("initrd") / "hanging.img"
    with open(path, "wb") as f:
        cpio.write([cpio.data("init", HANGING_INIT.encode(), 0o755),
                    cpio.directory("bin"), cpio.file("bin/busybox", binary, 0o755),
                    cpio.symlink("bin/sh", "busybox"), cpio.symlink("bin/sleep", "busybox"),
                    cpio.directory("dev"), cpio.chardev("dev/console", 5, 1, 0o600)], f)
    return path


def test_run_gives_up_at_the_boot_deadline(home, hanging_initrd):  # noqa: F811
    result = kindling_run(home, "--initrd", str(hanging_initrd), "--agent", "none",
                          "--no-headers", "--boot-timeout", "20", "--", "true")
    assert result.returncode == 125, result.stderr
    assert (f"kindling: error: the guest did not finish booting within 20 s, the boot deadline "
            f"({PROGRESS}); the VM was stopped") in result.stderr, result.stderr
    assert list(home.glob("instances/*")) == []          # removed, and no QEMU (kindling_run)


def test_wait_gives_up_at_the_boot_deadline(home, hanging_initrd):  # noqa: F811
    created = kindling_json(home, "create", "--initrd", str(hanging_initrd), "--agent", "none",
                            "--no-headers", "--", "true")
    log = next(home.glob("instances/*/logs/app.log"))
    eventually(lambda: STAGE in log.read_text(errors="replace"), "the stage line", timeout=120)
    r = kindling(home, "wait", created["id"], "--for", "running", "--timeout", "2", check=False)
    assert r.returncode == 125, r.stderr
    assert (f"kindling: error: instance {created['name']} was not Running within 2 s, the boot "
            f"deadline ({PROGRESS}); the VM was stopped") in r.stderr, r.stderr
    assert qemu_pids_using(home) == []
    info = json.loads(kindling(home, "inspect", "--json", created["id"]).stdout)
    assert info["state"] == "Stopped"
    assert "by kindling wait (boot deadline)" in info["vmm_exit"], info
    kindling(home, "delete", created["id"])
