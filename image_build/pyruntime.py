"""A self-contained Python runtime for the initrd.

The guest interpreter is Debian's /usr/bin/python3.11.  Nothing comes from a
host site-packages or venv: third-party packages are installed fresh from
PyPI (exact pins below) into the cache with `pip install --target`, and only
the stdlib modules that the guest code actually imports are copied, found by
tracing the imports with the guest interpreter itself (`-I -S`, sys.path set
to exactly [staged /usr/lib/kindling, host stdlib, lib-dynload]).

Layout in the initrd (Debian's, merged /usr):

    /bin -> usr/bin   /sbin -> usr/sbin   /lib -> usr/lib   /lib64 -> usr/lib64
    /usr/bin/python3.11
    /usr/lib/python3.11/...            traced stdlib (+ encodings/, os.pyc landmark)
    /usr/lib/python3.11/lib-dynload/   the extension modules the trace loaded
    /usr/lib/x86_64-linux-gnu/...      shared libraries (real files + soname links)
    /usr/lib/kindling/                 trio, pyroute2, ..., initsys/, agent/

Everything is compiled to sourceless, hash-based (unchecked) legacy-layout
.pyc files (x.py -> x.pyc, no __pycache__) and the .py files are dropped.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from image_build import cache, log
from image_build.errors import BuildError
from image_build.run import run

GUEST_PYTHON = Path("/usr/bin/python3.11")
GUEST_PYTHON_PACKAGE = "python3.11-minimal"
HOST_STDLIB = Path("/usr/lib/python3.11")
HOST_DYNLOAD = HOST_STDLIB / "lib-dynload"
PY_VERSION = "3.11"

# In the initrd.
INITRD_STDLIB = "usr/lib/python3.11"
INITRD_KINDLING = "usr/lib/kindling"

# Exact pins of the third-party guest dependencies (and their dependencies).
# Changing one invalidates the cached site dir and every initrd built from it.
PINS: dict[str, str] = {
    "trio": "0.35.0",
    "attrs": "26.1.0",
    "idna": "3.20",
    "outcome": "1.3.0.post0",
    "sniffio": "1.3.1",
    "sortedcontainers": "2.4.0",
    "pyroute2": "0.9.7",
    "pyudev": "0.24.5",
    "msgpack": "1.2.4",
    "h2": "4.4.1",          # the agent's gRPC front end (agent/grpc_front.py), pure Python
    "hpack": "4.2.0",
    "hyperframe": "6.1.0",
}

# Wheels: CPython 3.11 on x86_64 glibc (Debian 12 has glibc 2.36).
PIP_PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 37)]

# Imported by the trace when initsys/manifest.py has no GUEST_MODULES yet.
DEFAULT_GUEST_MODULES = [
    "initsys.main",
    "initsys.protocol",
    "trio",
    "pyudev",
    "pyroute2.iproute.linux",
    "msgpack",
]

# Traced, but left out of the initrd: the only users of libssl and libcrypto (5.3 MiB).  The
# initrd's `ssl` is a stand-in (SSL_STANDIN, which says why); hashlib falls back to the
# interpreter's built-in hashes.
NOT_STAGED = {
    "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
    "lib-dynload/_hashlib.cpython-311-x86_64-linux-gnu.so",
    "ssl.py",
}
SSL_STANDIN = Path("initsys") / "ssl_standin.py"

# Kindling's own guest packages, copied from the repo (.py files only).
KINDLING_PACKAGES = ["initsys", "agent", "systemd_units"]
# Besides their .py files, the guest packages carry these data files (systemd_units/*.service).
GUEST_DATA_SUFFIXES = (".service",)

# Extra shared libraries: loaded with dlopen, so neither ldd nor the trace sees them.
EXTRA_LIBRARIES = [
    Path("/usr/lib/x86_64-linux-gnu/libudev.so.1"),  # pyudev (libudev1)
]
OPTIONAL_LIBRARIES = [
    Path("/usr/lib/x86_64-linux-gnu/libgcc_s.so.1"),  # glibc dlopens it for thread cancellation/unwinding
]
LIBRARY_PACKAGES = {"libudev.so.1": "libudev1", "libgcc_s.so.1": "libgcc-s1"}

# Library directories the guest's loader searches without an ld.so.cache.
SYSTEM_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")

PIP_TIMEOUT = 900
TRACE_TIMEOUT = 300
COMPILE_TIMEOUT = 900
LDD_TIMEOUT = 60
STRIP_TIMEOUT = 120


# --------------------------------------------------------------------------
# The guest interpreter


def check_guest_python() -> None:
    if not GUEST_PYTHON.is_file():
        raise BuildError(
            f"{GUEST_PYTHON} not found: the guest runs Debian's Python 3.11;"
            f" install {GUEST_PYTHON_PACKAGE} (apt-get install {GUEST_PYTHON_PACKAGE})"
        )
    if not (HOST_STDLIB / "os.py").is_file():
        raise BuildError(f"{HOST_STDLIB}/os.py not found: the stdlib of {GUEST_PYTHON} is missing"
                         f" (apt-get install libpython3.11-stdlib)")


def host_inputs() -> list[Path]:
    """Host files whose change must invalidate a cached initrd (cheap stat check)."""
    return [GUEST_PYTHON, HOST_STDLIB, HOST_DYNLOAD, *EXTRA_LIBRARIES]


# --------------------------------------------------------------------------
# Third-party dependencies from PyPI


def site_key() -> str:
    return cache.Hasher("site").add("pins", PINS).add("platforms", PIP_PLATFORMS).add("py", PY_VERSION).hexdigest()


def install_deps(cache_dir: Path) -> Path:
    """pip-install the pinned wheels into <cache>/site/<key> (once)."""
    dest = cache_dir / "site" / site_key()
    if (dest / ".complete").exists():
        return dest
    if importlib.util.find_spec("pip") is None:
        raise BuildError(
            f"pip is not available for {sys.executable}, which installs the guest's Python packages;"
            " run from a venv that has pip, or apt-get install python3-pip"
        )
    reqs = [f"{name}=={version}" for name, version in sorted(PINS.items())]
    with log.step(f"Installing guest Python packages from PyPI ({len(reqs)} pinned)"):
        with cache.publishing_dir(dest) as tmp:
            target = tmp / "site"
            argv = [
                sys.executable, "-m", "pip", "install",
                "--target", target,
                "--no-compile", "--no-deps", "--no-input", "--disable-pip-version-check",
                "--only-binary=:all:",
                "--python-version", PY_VERSION,
                "--implementation", "cp",
            ]
            for plat in PIP_PLATFORMS:
                argv += ["--platform", plat]
            argv += reqs
            run(argv, timeout=PIP_TIMEOUT)
            check_installed(target)
            shutil.rmtree(target / "bin", ignore_errors=True)
            (tmp / ".complete").write_text(json.dumps(PINS, sort_keys=True) + "\n")
    return dest


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def check_installed(target: Path) -> None:
    found = {}
    for d in target.glob("*.dist-info"):
        name, _, version = d.name[: -len(".dist-info")].rpartition("-")
        found[_norm(name)] = version
    for name, version in PINS.items():
        got = found.get(_norm(name))
        if got != version:
            raise BuildError(f"pip did not install {name}=={version} into {target} (found {got!r})")


def site_dir(cache_entry: Path) -> Path:
    return cache_entry / "site"


# --------------------------------------------------------------------------
# Staging host files with their symlink chains


class Stager:
    """Copies host files into a staging root at the same paths, replicating
    every symlink met on the way (so soname links and /lib64/ld-linux... keep
    working), never writing outside the root."""

    def __init__(self, root: Path):
        self.root = root
        self.root_real = os.path.realpath(root)

    def _dest(self, host_path: str) -> Path:
        dest = self.root / host_path.lstrip("/")
        parent = os.path.realpath(dest.parent)
        if parent != self.root_real and not parent.startswith(self.root_real + os.sep):
            raise BuildError(f"staging {host_path} would write outside {self.root} (via {parent})")
        return dest

    def add(self, host_path: str | Path, _depth: int = 0) -> str:
        """Stage one host path; returns the real (symlink-free) host path."""
        if _depth > 40:
            raise BuildError(f"too many levels of symbolic links staging {host_path}")
        path = os.path.normpath(str(host_path))
        if not path.startswith("/"):
            raise BuildError(f"internal error: staging a relative path {path!r}")
        parts = path.strip("/").split("/")
        cur = ""
        for i, part in enumerate(parts):
            cur = f"{cur}/{part}"
            if os.path.islink(cur):
                target = os.readlink(cur)
                dest = self._dest(cur)
                if not os.path.lexists(dest):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(target, dest)
                base = target if target.startswith("/") else os.path.join(os.path.dirname(cur), target)
                rest = "/".join(parts[i + 1 :])
                return self.add(os.path.normpath(os.path.join(base, rest) if rest else base), _depth + 1)
            if not os.path.exists(cur):
                raise BuildError(f"{path}: {cur} does not exist on the host")
        dest = self._dest(path)
        if os.path.isdir(path):
            dest.mkdir(parents=True, exist_ok=True)
        elif not os.path.lexists(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            os.chmod(dest, os.stat(path).st_mode & 0o7777)
        return path


def make_merged_usr(root: Path) -> None:
    for top in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / top).mkdir(parents=True, exist_ok=True)
        link = root / top
        if not os.path.lexists(link):
            os.symlink(f"usr/{top}", link)


# --------------------------------------------------------------------------
# Shared-library closure


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def ldd(path: Path) -> list[str]:
    """The libraries `path` needs, as host paths ldd reports (incl. the loader)."""
    proc = run(["ldd", path], timeout=LDD_TIMEOUT, env={"LD_LIBRARY_PATH": "", "LD_PRELOAD": ""})
    libs = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line or "statically linked" in line:
            continue
        if "=>" in line:
            name, _, rest = line.partition("=>")
            rest = rest.strip()
            if rest.startswith("not found"):
                raise BuildError(f"{path} needs {name.strip()}, which ldd cannot find on this host")
            lib = rest.split(" (")[0].strip()
            if lib:
                libs.append(lib)
        elif line.startswith("/"):
            libs.append(line.split(" (")[0].strip())
        # else: linux-vdso.so.1 and friends
    return libs


def stage_libraries(stager: Stager, elf_files: list[Path]) -> list[str]:
    """Stage every library the given ELF files need; returns staged real paths."""
    todo = list(elf_files)
    done: set[str] = set()
    staged: list[str] = []
    while todo:
        f = todo.pop()
        for lib in ldd(f):
            real = os.path.realpath(lib)
            if real in done:
                continue
            done.add(real)
            if not os.path.dirname(real).startswith(SYSTEM_LIB_DIRS):
                raise BuildError(
                    f"{f} needs {lib} (really {real}), outside the loader's default directories"
                    f" {list(SYSTEM_LIB_DIRS)}; the initrd has no ld.so.cache, so it would not be found"
                )
            stager.add(lib)
            staged.append(real)
            todo.append(Path(real))
    return sorted(staged)


# --------------------------------------------------------------------------
# Tracing the imports

TRACER = r"""
import importlib, json, sys, traceback
out_path, kdir, stdlib, dynload = sys.argv[1:5]
modules = json.loads(sys.argv[5])
kindling = set(json.loads(sys.argv[6]))
sys.path[:] = [kdir, stdlib, dynload]
errors = {}
for name in modules:
    try:
        mod_name, _, func = name.partition(":")
        mod = importlib.import_module(mod_name)
        if func:
            getattr(mod, func)()
    except BaseException as e:
        missing = isinstance(e, ModuleNotFoundError) and e.name is not None and (
            mod_name == e.name or mod_name.startswith(e.name + "."))
        errors[name] = {
            "type": type(e).__name__,
            "message": str(e),
            "missing": missing,
            "kindling": name.split(".")[0] in kindling,
            "traceback": traceback.format_exc(),
        }
files = {}
for mod_name, mod in sorted(sys.modules.items()):
    f = getattr(mod, "__file__", None)
    if isinstance(f, str):
        files[mod_name] = f
with open(out_path, "w") as fp:
    json.dump({"files": files, "errors": errors, "version": sys.version,
               "version_info": list(sys.version_info[:3]), "path": sys.path}, fp)
"""


@dataclass
class Trace:
    files: dict[str, str]
    errors: dict[str, dict]
    version: str
    version_info: list[int]


def guest_modules(repo_root: Path) -> list[str]:
    """GUEST_MODULES from initsys/manifest.py (read without importing it), or the default."""
    manifest = repo_root / "initsys" / "manifest.py"
    if not manifest.is_file():
        log.warn(f"{manifest} does not exist yet; tracing the default module list {DEFAULT_GUEST_MODULES}")
        return list(DEFAULT_GUEST_MODULES)
    try:
        tree = ast.parse(manifest.read_text(), str(manifest))
    except SyntaxError as e:
        raise BuildError(f"{manifest}: cannot parse: {e}") from None
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
            value = node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
            value = node.value
        if any(isinstance(t, ast.Name) and t.id == "GUEST_MODULES" for t in targets):
            try:
                mods = ast.literal_eval(value)
            except ValueError:
                raise BuildError(f"{manifest}: GUEST_MODULES must be a literal list of dotted module names") from None
            if not isinstance(mods, (list, tuple)) or not all(isinstance(m, str) and m for m in mods):
                raise BuildError(f"{manifest}: GUEST_MODULES must be a list of dotted module names (strings)")
            return list(mods)
    raise BuildError(f"{manifest}: no GUEST_MODULES = [...] list found (expected a list of dotted module names)")


def script_imports(script: Path) -> list[str]:
    """Top-level module names imported by a script such as /init (static scan)."""
    try:
        tree = ast.parse(script.read_bytes(), str(script))
    except SyntaxError as e:
        raise BuildError(f"{script}: cannot parse as Python: {e}") from None
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
    return names


def trace_imports(kindling_dir: Path, modules: list[str], work: Path, optional: set[str] = frozenset()) -> Trace:
    """Import `modules` in the guest interpreter; return every loaded file.

    ImportErrors of Kindling's own modules that don't exist yet and of
    `optional` names are warnings; any other failure is a BuildError.
    """
    out = work / "trace.json"
    argv = [
        GUEST_PYTHON, "-I", "-S", "-B", "-c", TRACER,
        out, kindling_dir, HOST_STDLIB, HOST_DYNLOAD,
        json.dumps(modules), json.dumps(KINDLING_PACKAGES),
    ]
    run(argv, timeout=TRACE_TIMEOUT, cwd=work)
    data = json.loads(out.read_text())
    for name, err in data["errors"].items():
        if (err["missing"] and err["kindling"]) or name in optional:
            if name in optional and not err["missing"]:
                log.warn(f"import of {name} failed during the trace: {err['type']}: {err['message']}")
            elif name not in optional:
                log.warn(f"guest module {name} does not exist yet ({err['message']}); not traced")
            continue
        raise BuildError(
            f"the guest interpreter could not import {name!r} during the import trace:\n{err['traceback']}"
        )
    return Trace(data["files"], data["errors"], data["version"], data["version_info"])


# --------------------------------------------------------------------------
# Staging the runtime


@dataclass
class Runtime:
    python_version: str
    deps: dict[str, str]
    stdlib_files: list[str] = field(default_factory=list)  # relative to the stdlib dir
    libraries: list[str] = field(default_factory=list)     # host real paths
    host_files: list[str] = field(default_factory=list)    # for cache validation


def _copy_py_tree(src: Path, dest: Path) -> int:
    """Copy the .py and data files of a package tree (no __pycache__, nothing else)."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".py") or name.endswith(GUEST_DATA_SUFFIXES):
                s = Path(dirpath) / name
                d = dest / s.relative_to(src)
                d.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(s, d)
                os.chmod(d, 0o644)
                n += 1
    return n


# Not needed at run time: type stubs, markers, stale bytecode, the packages'
# own test suites (trio/_tests, trio/_core/_tests, sniffio/_tests).
SITE_IGNORE = ("__pycache__", "*.pyc", "*.pyi", "py.typed", "_tests")


def _copy_site(site: Path, dest: Path) -> None:
    for entry in sorted(site.iterdir()):
        if entry.name in ("bin", "__pycache__") or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest / entry.name, symlinks=True,
                            ignore=shutil.ignore_patterns(*SITE_IGNORE))
        else:
            shutil.copy2(entry, dest / entry.name)


def strip_extensions(tree: Path) -> int:
    """Strip the symbol tables of the ELF files under `tree` (the wheels' extension
    modules, staged copies: msgpack's _cmsgpack ships unstripped, 1.55 MiB -> 0.19 MiB).
    Debian's own binaries and libraries come stripped already.  Returns the bytes saved."""
    strip = shutil.which("strip")
    if strip is None:
        raise BuildError("strip not found: it trims the guest's extension modules; apt-get install binutils")
    saved = 0
    for f in sorted(p for p in tree.rglob("*.so") if p.is_file() and not p.is_symlink() and _is_elf(p)):
        before = f.stat().st_size
        run([strip, "--strip-unneeded", f], timeout=STRIP_TIMEOUT)
        saved += before - f.stat().st_size
    return saved


def traced_stdlib(kdir: Path, repo_root: Path, work: Path, init_script: Path | None) -> tuple[Trace, set[str]]:
    """The import trace, and the stdlib files (relative to the stdlib dir) the guest needs."""
    modules = guest_modules(repo_root)
    optional: set[str] = set()
    if init_script is not None:
        for name in script_imports(init_script):
            if name not in modules:
                modules.append(name)
                optional.add(name)  # `from x import name` may name a function, not a module
    with log.step(f"Tracing guest imports ({len(modules)} modules)"):
        trace = trace_imports(kdir, modules, work, optional)

    stdlib_real = os.path.realpath(HOST_STDLIB)
    kdir_real = os.path.realpath(kdir)
    stdlib_rel: set[str] = set()
    for mod, f in trace.files.items():
        real = os.path.realpath(f)
        if real.startswith(kdir_real + os.sep):
            continue
        if real.startswith(stdlib_real + os.sep):
            stdlib_rel.add(os.path.relpath(real, stdlib_real))
            continue
        raise BuildError(f"the import trace loaded {mod!r} from {f}, outside the stdlib and the staged packages")
    # Always: the landmark and all of encodings (codecs are looked up by name at run time).
    stdlib_rel.add("os.py")
    for p in (HOST_STDLIB / "encodings").glob("*.py"):
        stdlib_rel.add(os.path.relpath(p, HOST_STDLIB))
    return trace, stdlib_rel - NOT_STAGED


def stage_ssl_standin(stage_root: Path, repo_root: Path) -> None:
    """The initrd's `ssl` is initsys/ssl_standin.py (it says why): TLS is never used in the guest."""
    shutil.copyfile(repo_root / SSL_STANDIN, stage_root / INITRD_STDLIB / "ssl.py")


def stage_runtime(stage_root: Path, site: Path, repo_root: Path, work: Path,
                  init_script: Path | None) -> Runtime:
    check_guest_python()
    stager = Stager(stage_root)
    make_merged_usr(stage_root)
    stager.add(GUEST_PYTHON)

    # /usr/lib/kindling: third-party packages + Kindling's guest packages
    kdir = stage_root / INITRD_KINDLING
    kdir.mkdir(parents=True, exist_ok=True)
    _copy_site(site, kdir)
    saved = strip_extensions(kdir)
    if saved:
        log.info(f"stripped the packages' extension modules: {log.human_size(saved)} less")
    for pkg in KINDLING_PACKAGES:
        src = repo_root / pkg
        if not (src / "__init__.py").is_file():
            raise BuildError(f"{src}/__init__.py not found: Kindling's guest package {pkg!r} is missing from the repo")
        if (kdir / pkg).exists():
            raise BuildError(f"a third-party package also provides {pkg!r}; refusing to overwrite it")
        _copy_py_tree(src, kdir / pkg)

    trace, stdlib_rel = traced_stdlib(kdir, repo_root, work, init_script)
    for rel in sorted(stdlib_rel):
        if "site-packages" in rel or "dist-packages" in rel:
            raise BuildError(f"refusing to stage {HOST_STDLIB / rel}: not part of the stdlib")
        stager.add(HOST_STDLIB / rel)
    stager.add(HOST_DYNLOAD)  # the directory itself: exec_prefix landmark

    # shared libraries of the interpreter, the extension modules and libudev
    for lib in EXTRA_LIBRARIES:
        if not lib.exists():
            pkg = LIBRARY_PACKAGES.get(lib.name, "?")
            raise BuildError(f"{lib} not found (install {pkg}: apt-get install {pkg})")
        stager.add(lib)
    for lib in OPTIONAL_LIBRARIES:
        if lib.exists():
            stager.add(lib)
    elf_files = [p for p in stage_root.rglob("*") if p.is_file() and not p.is_symlink() and _is_elf(p)]
    with log.step(f"Resolving shared libraries of {len(elf_files)} ELF files"):
        libs = stage_libraries(stager, sorted(elf_files))

    stage_ssl_standin(stage_root, repo_root)

    # sourceless bytecode
    with log.step("Compiling bytecode"):
        compile_tree(stage_root, [stage_root / INITRD_STDLIB, kdir])
        drop_sources(stage_root)

    host_files = [str(GUEST_PYTHON)] + [str(HOST_STDLIB / r) for r in sorted(stdlib_rel)] + libs
    host_files += [str(lib) for lib in EXTRA_LIBRARIES]
    return Runtime(
        python_version=trace.version.split()[0],
        deps=dict(sorted(PINS.items())),
        stdlib_files=sorted(stdlib_rel),
        libraries=sorted(set(libs) | {os.path.realpath(p) for p in EXTRA_LIBRARIES + OPTIONAL_LIBRARIES if p.exists()}),
        host_files=host_files,
    )


def compile_tree(stage_root: Path, dirs: list[Path]) -> None:
    """Compile with the guest interpreter: legacy layout (-b), unchecked-hash,
    file names as seen in the guest (-s stage -p /), one process, sorted order
    (so the output is reproducible), at optimization level 2 (-o 2: docstrings
    and asserts left out -- every interpreter's heap of code objects is smaller,
    and shared by PID 1 and the agent it forks; the sourceless loader reads the
    x.pyc whatever the running interpreter's -O level)."""
    argv = [
        GUEST_PYTHON, "-I", "-S", "-B", "-m", "compileall", "-q", "-b", "-o", "2",
        "--invalidation-mode", "unchecked-hash",
        "-s", stage_root, "-p", "/",
        *dirs,
    ]
    run(argv, timeout=COMPILE_TIMEOUT, env={"SOURCE_DATE_EPOCH": "0"})


def drop_sources(stage_root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(stage_root):
        for name in filenames:
            if name.endswith(".py"):
                pyc = os.path.join(dirpath, name + "c")
                if not os.path.exists(pyc):
                    raise BuildError(f"{os.path.join(dirpath, name)} was not compiled (no {name}c)")
                os.unlink(os.path.join(dirpath, name))
        if "__pycache__" in dirnames:
            shutil.rmtree(os.path.join(dirpath, "__pycache__"))
            dirnames.remove("__pycache__")
