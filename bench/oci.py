"""OCI image benchmark (issue 13): pull + convert time of a ~50 MB image from a local
registry, and the overhead of a cached `run --image` against `run --rootfs` of the same tree.

  pull      the test image of tests/oci_fixtures.py plus a 50 MiB layer of random bytes
            (incompressible: ~50 MB on the wire), pushed to Debian's docker-registry on
            127.0.0.1; `image pull` into an empty cache (skopeo fetch + umoci unpack +
            mkfs.erofs), median over --iterations; and a re-pull into the same cache
            (the blobs are there: only the manifest and config travel); the same from a
            second registry over https (a test CA) with basic auth (htpasswd)
  prepare   what differs between the two on the host: create's preparation in-process
            (options, checks, config.json, kernel/initrd/rootfs from the cache into an
            instance directory) for `--image REF` and for `--rootfs DIR`, median of
            3 x --iterations; the boots themselves boot the same erofs content
  run       `kindling run --accel tcg -- true`, wall time, after one untimed warm-up each:
            `--image REF` (the image cached) against `--rootfs DIR` (the image's tree,
            extracted from its erofs; its rootfs image cached too); medians and their ratio

    .venv/bin/python bench/oci.py [--iterations 3] [--json FILE]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from image_build import busybox, cache  # noqa: E402
from image_build.oci import images  # noqa: E402
from image_build.oci.access import Access  # noqa: E402
from image_build.run import run  # noqa: E402
from tests.oci_fixtures import Registry, app_layers, make_image  # noqa: E402
from tests.registry_auth import auth_file, htpasswd_file, make_pki  # noqa: E402

BIG_LAYER_BYTES = 50 << 20
RUN_TIMEOUT = 600


def build_image(work: Path) -> Path:
    _, binary = busybox.fetch(cache.default_cache_dir())
    tree = work / "busybox"
    tree.mkdir()
    busybox.stage(tree, binary)
    layers = app_layers(work, tree)
    big = work / "big"
    (big / "data").mkdir(parents=True)
    with open(big / "data/random.bin", "wb") as f:
        f.write(os.urandom(BIG_LAYER_BYTES))
    run(["tar", "-C", big, "-cf", work / "l4.tar", "data"], timeout=120)
    return make_image(work / "layout", "1", layers + [work / "l4.tar"])


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def pulls(ref: str, work: Path, iterations: int, access: Access = Access(insecure=True)) -> dict:
    cold, warm = [], []
    for i in range(iterations):
        cache_dir = work / f"cache-{i}"
        cold.append(timed(lambda: images.pull(ref, cache_dir, access=access)))
        shutil.rmtree(cache_dir / "oci" / "images")        # keep the blobs, convert again
        warm.append(timed(lambda: images.pull(ref, cache_dir, access=access)))
        size = images.lookup(ref, cache_dir).info["size"]
        shutil.rmtree(cache_dir)
    return {"image_bytes": size, "pull_convert_s": statistics.median(cold),
            "repull_cached_blobs_convert_s": statistics.median(warm), "cold_s": cold, "warm_s": warm}


def secure_pulls(layout: Path, work: Path, iterations: int) -> dict:
    """The same pulls from a registry over https (a test CA) with basic auth."""
    pki = make_pki(work / "pki")
    htpasswd = htpasswd_file(work / "htpasswd", "bench", "bench-pw")
    registry = Registry(work / "secure", tls=pki, auth={"htpasswd": {"realm": "bench",
                                                                     "path": str(htpasswd)}})
    try:
        push_auth = auth_file(work / "push-auth.json", registry.host, "bench", "bench-pw")
        registry.push_args = ["--dest-cert-dir", str(pki.cert_dir), "--dest-authfile", str(push_auth)]
        ref = registry.push(f"oci:{layout}:1", "bench/big:1")
        return pulls(ref, work, iterations, Access(cert_dir=pki.cert_dir, creds="bench:bench-pw"))
    finally:
        registry.stop()


def kindling_run(*args) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT), KINDLING_ACCEL="tcg")
    argv = [sys.executable, "-m", "host_shim.cli", "run", "--accel", "tcg", *args, "--", "true"]
    start = time.monotonic()
    r = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=RUN_TIMEOUT)
    elapsed = time.monotonic() - start
    if r.returncode != 0:
        raise SystemExit(f"kindling run {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return elapsed


def prepare_once(values: dict) -> float:
    from host_shim import options, prepare
    with tempfile.TemporaryDirectory(prefix="kindling-oci-prep-") as out:
        start = time.monotonic()
        opts = options.make(options.CreateOptions, dict(values, command=["true"]), None)
        prepare.check_inputs(opts)
        prepare.config_for(opts)
        prepare.build_artifacts(opts, Path(out))
        return time.monotonic() - start


def prepares(ref: str, host: str, tree: Path, iterations: int) -> dict:
    with_image = {"image": ref, "insecure_registries": [host]}
    with_rootfs = {"rootfs": str(tree)}
    n = 3 * iterations
    a = statistics.median(prepare_once(with_image) for _ in range(n))
    b = statistics.median(prepare_once(with_rootfs) for _ in range(n))
    return {"prepare_image_s": a, "prepare_rootfs_s": b, "ratio": a / b, "samples": n}


def runs(ref: str, host: str, work: Path, iterations: int) -> dict:
    image = images.pull(ref, cache.default_cache_dir(), access=Access(insecure=True))   # where `run` looks
    tree = work / "tree"
    run(["fsck.erofs", f"--extract={tree}", "--preserve", image.rootfs], timeout=600)
    with_image = ["--insecure-registry", host, "--image", ref]
    with_rootfs = ["--rootfs", str(tree)]
    kindling_run(*with_image), kindling_run(*with_rootfs)                  # warm-up: caches
    prep = prepares(ref, host, tree, iterations)
    a = [kindling_run(*with_image) for _ in range(iterations)]
    b = [kindling_run(*with_rootfs) for _ in range(iterations)]
    images.remove(ref, cache.default_cache_dir())
    ma, mb = statistics.median(a), statistics.median(b)
    return {"run_image_s": ma, "run_rootfs_s": mb, "ratio": ma / mb, "overhead_s": ma - mb,
            "image_s": a, "rootfs_s": b, "prepare": prep}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3, help="timed repetitions (default 3)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.iterations < 1:
        ap.error("--iterations: at least 1")
    with tempfile.TemporaryDirectory(prefix="kindling-oci-bench-") as tmp:
        work = Path(tmp)
        layout = build_image(work)
        registry = Registry(work)
        try:
            ref = registry.push(f"oci:{layout}:1", "bench/big:1")
            report = {"iterations": args.iterations, "pull": pulls(ref, work, args.iterations)}
            p = report["pull"]
            print(f"pull + convert ({p['image_bytes'] / 1e6:.1f} MB): {p['pull_convert_s']:.2f} s; "
                  f"re-pull, blobs cached, convert again: {p['repull_cached_blobs_convert_s']:.2f} s")
            report["pull_https_basic_auth"] = s = secure_pulls(layout, work, args.iterations)
            print(f"the same over https (a test CA) with basic auth: {s['pull_convert_s']:.2f} s; "
                  f"re-pull: {s['repull_cached_blobs_convert_s']:.2f} s")
            report["run"] = runs(ref, registry.host, work, args.iterations)
        finally:
            registry.stop()
    r = report["run"]
    print(f"run --image (cached) {r['run_image_s']:.2f} s, run --rootfs {r['run_rootfs_s']:.2f} s: "
          f"ratio {r['ratio']:.3f}, overhead {r['overhead_s']:+.2f} s (medians, TCG)")
    p = r["prepare"]
    print(f"host preparation: --image {p['prepare_image_s']:.3f} s, --rootfs "
          f"{p['prepare_rootfs_s']:.3f} s: ratio {p['ratio']:.3f} (medians of {p['samples']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
