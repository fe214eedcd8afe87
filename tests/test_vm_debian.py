"""The Debian base (`--base debian`) in a real VM under TCG, in exec mode: our PID 1
and agent on a full Debian userland.  (Without a command the image boots its own
/sbin/init in systemd mode; tests/test_host_shim_initmode.py checks that config.)"""

import re

import pytest

from tests.vm import kindling_run

pytestmark = pytest.mark.vm

SCRIPT = ("cat /etc/debian_version; readlink /sbin/init; id -un; ps -o comm= -p $$; "
          "stat -c '%a %U:%G' /usr/bin/passwd /etc/shadow")


def test_debian_rootfs_in_exec_mode(tmp_path):
    # a cold build of the image downloads it first (~1 min), hence the longer limit
    r = kindling_run(tmp_path, "--base", "debian", "--init-mode", "exec", "--", "sh", "-c", SCRIPT,
                     timeout=900)
    assert r.returncode == 0, r.stderr
    version, init, user, shell, passwd, shadow = r.stdout.splitlines()
    assert re.fullmatch(r"12\.\d+", version), r.stdout
    assert (init, user, shell) == ("/lib/systemd/systemd", "root", "sh")
    assert (passwd, shadow) == ("4755 root:root", "640 root:shadow")   # modes and owners kept
