"""initsys/deferred.py: trio imports without loading ssl and hmac, and they still work."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
from initsys import deferred
deferred.defer()
import trio
assert "_ssl" not in sys.modules and "_hashlib" not in sys.modules, "loaded eagerly"
trio.run(trio.sleep, 0)
import ssl, hmac
assert ssl.PROTOCOL_TLS_CLIENT == 16 and "_ssl" in sys.modules
assert issubclass(trio._ssl._stdlib_ssl.SSLEOFError, ssl.SSLError)
assert hmac.new(b"k", b"m", "sha256").hexdigest().startswith("b60090e3052297ae")
assert sys.modules["ssl"].__spec__ is not None
print("ok")
"""


def test_trio_imports_without_ssl_and_hmac_which_load_on_first_use():
    r = subprocess.run([sys.executable, "-I", "-c", CHECK, str(REPO)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ok\n"
