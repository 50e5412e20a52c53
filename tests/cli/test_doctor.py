"""``synthray doctor`` on the real stack: all green, then SeaweedFS stopped, then a wrong S3 secret.

Runs the real CLI in a subprocess (doctor joins Ray, which must stay out of the pytest driver)
against the session's private stack; SeaweedFS is restarted afterwards, its data on disk intact.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from infra.settings import PROJECT_ROOT
from infra.stack import LocalStack

pytestmark = pytest.mark.stack


def _doctor(**env: str) -> tuple[int, dict[str, str]]:
    proc = subprocess.run([sys.executable, "-m", "services.cli.main", "doctor"], cwd=PROJECT_ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    lines: dict[str, str] = {}
    current = None
    for line in proc.stdout.splitlines():
        if line.startswith("["):
            current = line[7:25].strip()
            lines[current] = line
        elif current and line.strip().startswith("fix:"):
            lines[current] += "\n" + line.strip()
    return proc.returncode, lines


def test_doctor_green_then_names_the_broken_part(stack) -> None:
    code, lines = _doctor()
    required = {k: v for k, v in lines.items() if k != "Serve app"}
    assert code == 0, lines
    assert set(required) >= {"packages", "torchvision", "FID weights", "object store", "MLflow server", "Ray head",
                             "S3 credentials", "MLflow registry", "Ray cluster", "disk"}
    assert all(v.startswith("[ok  ]") for v in required.values()), required
    assert "CPU" in lines["Ray cluster"] and "sha256" in lines["FID weights"]

    code, lines = _doctor(SYNTHRAY_S3_SECRET_KEY="not-the-secret")
    assert code == 1
    assert lines["S3 credentials"].startswith("[FAIL]") and "refused the keys" in lines["S3 credentials"]
    assert "fix: set SYNTHRAY_S3_ACCESS_KEY / SYNTHRAY_S3_SECRET_KEY" in lines["S3 credentials"]
    assert lines["object store"].startswith("[ok  ]")  # the server is fine; the keys are not

    local = LocalStack(stack)
    local.down(only=["seaweedfs"])
    try:
        code, lines = _doctor()
        assert code == 1
        assert lines["object store"].startswith("[FAIL]") and "stopped" in lines["object store"]
        assert "fix: synthray stack up" in lines["object store"]
        assert lines["S3 credentials"].startswith("[FAIL]") and "cannot reach the object store" in lines["S3 credentials"]
        assert lines["MLflow server"].startswith("[ok  ]")
    finally:
        local.up(only=["seaweedfs"])
