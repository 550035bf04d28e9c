"""The FerretDB wire proxy's own tests (deploy/ferretdb/serialise_test.go), run with the suite."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

FERRETDB_SRC = Path(__file__).resolve().parents[2] / "deploy" / "ferretdb"


def test_the_serialising_proxy_refuses_rather_than_bypasses_and_passes_its_go_tests() -> None:
    go = shutil.which("go")
    if go is None:
        pytest.fail("go is not on PATH: it builds the local FerretDB, and runs its proxy's tests")
    result = subprocess.run(
        [go, "test", "-count=1", "./"],
        cwd=FERRETDB_SRC,
        env={**os.environ, "GOFLAGS": "-buildvcs=false"},
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ok" in result.stdout
