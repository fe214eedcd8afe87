"""`kindling run --image` boots an OCI image pulled from a real registry (one TCG boot):
the whiteouts hold, the image's Env, WorkingDir and non-root User apply, and a given
command replaces Cmd while the Entrypoint stays (tests/oci_fixtures.py's /app/show
prints all of it)."""

import pytest

from tests.oci_fixtures import app_layout, app_ref, oci_work, registry  # noqa: F401
from tests.vm import kindling, kindling_run, private_home

pytestmark = pytest.mark.vm


def test_run_image_applies_layers_and_the_images_defaults(app_ref):
    host = app_ref.split("/")[0]
    with private_home("koci") as home:
        try:
            r = kindling_run(home, "--insecure-registry", host, "--image", app_ref, "--",
                             "given-arg")
        finally:
            kindling(home, "image", "rm", app_ref, check=False)   # the shared cache's store
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert "ARGS=given-arg" in lines           # Entrypoint kept, Cmd (from-cmd) replaced
        assert "GREETING=hello-oci" in lines       # the image's Env
        assert "PWD=/work/dir" in lines            # its WorkingDir
        assert "ID=1000:1000" in lines             # its non-root User
        assert {"NO /doomed", "NO /data/old1", "NO /data/old2", "HAS /data/new"} <= set(lines)
