"""Fetching Debian packages into the cache: apt-get download + dpkg-deb -x."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from image_build import cache, log
from image_build.errors import BuildError
from image_build.run import run

APT_TIMEOUT = 60
DOWNLOAD_TIMEOUT = 600
EXTRACT_TIMEOUT = 300


@dataclass(frozen=True)
class DebInfo:
    package: str
    version: str
    architecture: str

    @property
    def filename(self) -> str:
        # apt-get download writes the epoch colon as %3a
        return f"{self.package}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"

    @property
    def slug(self) -> str:
        return f"{self.package}_{self.version.replace(':', '_')}_{self.architecture}"


def require_apt(what: str) -> None:
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        raise BuildError(f"apt-get/apt-cache not found: {what}")


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # first stanza only
        if ":" in line and not line.startswith(" "):
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _stanzas(text: str) -> list[dict[str, str]]:
    """Every stanza of `apt-cache show` output, in order."""
    return [_fields(block) for block in text.split("\n\n") if block.strip()]


# apt's answers change only when these change (apt-get update, pinning, sources).
APT_STATE = [
    Path("/var/lib/apt/lists"),
    Path("/var/cache/apt/pkgcache.bin"),
    Path("/etc/apt/preferences.d"),
    Path("/etc/apt/sources.list.d"),
    Path("/etc/apt/sources.list"),
]

_memo_file: Path | None = None


def use_memo(cache_dir: Path | None) -> None:
    """Remember apt-cache answers in <cache>/apt-memo.json while apt's state
    (lists, pins, sources) is unchanged: each apt-cache call costs ~0.6 s."""
    global _memo_file
    _memo_file = None if cache_dir is None else cache_dir / "apt-memo.json"


def _memo(kind: str, arg: str, compute):
    if _memo_file is None:
        return compute()
    state = cache.fingerprints(APT_STATE)
    data = cache.read_json(_memo_file) or {}
    if data.get("state") != state:
        data = {"state": state, "answers": {}}
    k = f"{kind}:{arg}"
    if k in data["answers"]:
        return data["answers"][k]
    value = compute()
    data["answers"][k] = value
    try:
        cache.write_json(_memo_file, data)
    except OSError:
        pass
    return value


def candidate(package: str) -> DebInfo:
    """The version apt would install now."""
    return DebInfo(*_memo("candidate", package, lambda: list(_candidate(package).__dict__.values())))


def _candidate(package: str) -> DebInfo:
    proc = run(["apt-cache", "show", "--no-all-versions", package], timeout=APT_TIMEOUT)
    f = _fields(proc.stdout)
    if "Version" not in f:
        raise BuildError(
            f"apt-cache knows no installable version of {package!r} (run `apt-get update` first?)"
        )
    return DebInfo(package, f["Version"], f.get("Architecture", "amd64"))


def available(package: str) -> list[dict[str, str]]:
    """Every version of `package` apt knows, as {Version, Architecture, Depends} (newest first)."""
    return _memo("available", package, lambda: _available(package))


def _available(package: str) -> list[dict[str, str]]:
    try:
        proc = run(["apt-cache", "show", package], timeout=APT_TIMEOUT)
    except BuildError as e:
        raise BuildError(f"apt knows no package {package!r} (run `apt-get update` first?): {e}") from None
    keep = ("Version", "Architecture", "Depends")
    return [{k: s[k] for k in keep if k in s} for s in _stanzas(proc.stdout) if "Version" in s]


def exact(package: str, version: str, why: str) -> DebInfo:
    """`package` at exactly `version` (`why` says who needs that version), or BuildError
    naming the version needed and the versions apt offers."""
    offered = available(package)
    for stanza in offered:
        if stanza["Version"] == version:
            return DebInfo(package, version, stanza.get("Architecture", "amd64"))
    versions = ", ".join(s["Version"] for s in offered) or "none"
    raise BuildError(f"{package} {version} is needed ({why}), but apt offers only: {versions}"
                     " (run `apt-get update`, or pin the same version of both)")


def depends(package: str, version: str) -> list[str]:
    """The package names `package` (at `version`) depends on: first alternatives, no versions."""
    for stanza in available(package):
        if stanza["Version"] == version:
            deps = stanza.get("Depends", "")
            return [d.split("|")[0].split("(")[0].split(":")[0].strip()
                    for d in deps.split(",") if d.strip()]
    raise BuildError(f"apt-cache show {package} lists no version {version}")


def resolve_metapackage(meta: str, prefix: str) -> str:
    """The versioned package a metapackage depends on, e.g.
    linux-image-cloud-amd64 -> linux-image-6.1.0-57-cloud-amd64."""
    return _memo("depends", f"{meta} {prefix}", lambda: _resolve_metapackage(meta, prefix))


def _resolve_metapackage(meta: str, prefix: str) -> str:
    proc = run(["apt-cache", "depends", meta], timeout=APT_TIMEOUT)
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("Depends:"):
            dep = line.split(":", 1)[1].strip().strip("<>")
            if dep.startswith(prefix):
                return dep
    raise BuildError(
        f"`apt-cache depends {meta}` shows no dependency starting with {prefix!r}"
        " (run `apt-get update` first?)"
    )


def fetch_and_extract(package: str | DebInfo, cache_dir: Path, kind: str) -> tuple[DebInfo, Path]:
    """Download `package` (the candidate version, or exactly the given DebInfo) into
    <cache>/debs and extract it into <cache>/<kind>/<slug>.

    Both steps are skipped when their result is already in the cache.
    """
    info = package if isinstance(package, DebInfo) else candidate(package)
    debs = cache.ensure_dir(cache_dir / "debs")
    deb = debs / info.filename
    if not deb.is_file():
        with log.step(f"Downloading {info.package} {info.version}"):
            run(["apt-get", "download", f"{info.package}={info.version}"], cwd=debs, timeout=DOWNLOAD_TIMEOUT)
        if not deb.is_file():
            found = sorted(p.name for p in debs.glob(f"{info.package}_*.deb"))
            raise BuildError(f"apt-get download of {info.package} did not produce {deb} (found: {found})")
    dest = cache_dir / kind / info.slug
    if not (dest / ".complete").exists():
        with log.step(f"Extracting {deb.name}"):
            with cache.publishing_dir(dest) as tmp:
                run(["dpkg-deb", "-x", deb, tmp], timeout=EXTRACT_TIMEOUT)
                (tmp / ".complete").write_text(info.version + "\n")
    return info, dest
