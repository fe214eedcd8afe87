"""The initrd's `ssl` module: a stand-in, so that libssl and libcrypto stay out of the initrd.

image_build/pyruntime.py installs this file as the initrd's stdlib `ssl` (and
leaves out `_ssl` and `_hashlib`, the only users of libssl and libcrypto:
5.3 MiB, a fifth of the initrd).  Nothing in the guest speaks TLS, but three
imports need the module to exist: trio's TLS layer (`import ssl` at its top,
attributes read only inside functions), asyncio's sslproto (the network
helper's pyroute2; it reads the exception classes below at import), and
pyroute2's probe messages (`import ssl` at the top).  So it defines the
exception hierarchy of the real module and nothing else: any other attribute
is an AttributeError that says why.  `hashlib` falls back to the interpreter's
built-in hashes (Debian's python3.11 has md5, sha1, sha2, sha3 and blake2 built
in), which is what `hmac` and `random` use.
"""


class SSLError(OSError):
    pass


class SSLZeroReturnError(SSLError):
    pass


class SSLWantReadError(SSLError):
    pass


class SSLWantWriteError(SSLError):
    pass


class SSLSyscallError(SSLError):
    pass


class SSLEOFError(SSLError):
    pass


class SSLCertVerificationError(SSLError, ValueError):
    pass


CertificateError = SSLCertVerificationError


def __getattr__(name):
    raise AttributeError(f"ssl.{name}: Kindling's initrd has no TLS (its `ssl` is a stand-in that only "
                         "defines the exception classes: initsys/ssl_standin.py)")
