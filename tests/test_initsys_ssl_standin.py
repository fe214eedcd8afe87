"""initsys/ssl_standin.py, the initrd's `ssl`: what the guest imports works with it and without
libssl/libcrypto (`_ssl`, `_hashlib` unavailable), and TLS itself says why it is missing."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK = """
import sys
sys.modules["_ssl"] = sys.modules["_hashlib"] = None   # as in the initrd: not there
sys.path.insert(0, sys.argv[1])                         # the stand-in, as `ssl`
sys.path.insert(1, sys.argv[2])
import ssl
assert ssl.__file__.startswith(sys.argv[1]), ssl.__file__
import trio, asyncio.sslproto, hmac, random
from pyroute2.iproute.linux import IPRoute            # the network helper's import (asyncio, probe)
trio.run(trio.sleep, 0)
assert asyncio.sslproto.SSLAgainErrors == (ssl.SSLWantReadError, ssl.SSLSyscallError)
assert issubclass(trio._ssl._stdlib_ssl.SSLEOFError, OSError)
assert hmac.new(b"k", b"m", "sha256").hexdigest().startswith("b60090e3052297ae")  # built-in sha256
try:
    ssl.create_default_context()
except AttributeError as e:
    assert "no TLS" in str(e) and "ssl_standin" in str(e), e
else:
    raise AssertionError("the stand-in made a TLS context")
print("ok")
"""


def test_the_guest_imports_work_with_the_ssl_standin_and_no_openssl(tmp_path):
    shutil.copyfile(REPO / "initsys" / "ssl_standin.py", tmp_path / "ssl.py")
    r = subprocess.run([sys.executable, "-I", "-c", CHECK, str(tmp_path), str(REPO)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"


def test_the_initrd_leaves_openssl_out_and_ships_the_standin():
    from image_build import pyruntime
    assert {"ssl.py", "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
            "lib-dynload/_hashlib.cpython-311-x86_64-linux-gnu.so"} <= pyruntime.NOT_STAGED
    assert (REPO / pyruntime.SSL_STANDIN).is_file()
