"""Fixtures shared by the host-only tests."""

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def home(monkeypatch):
    """A private, short KINDLING_HOME (the QMP socket path must fit in sun_path), and no
    accelerator from the environment.  VM test modules define their own `home`."""
    path = Path(tempfile.mkdtemp(prefix="kh-"))
    monkeypatch.setenv("KINDLING_HOME", str(path))
    monkeypatch.delenv("KINDLING_ACCEL", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)
