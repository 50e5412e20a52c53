"""What the benchmark scripts share (``benchmarks/_common.py``)."""

from __future__ import annotations

import subprocess
import sys

from infra.settings import PROJECT_ROOT

BENCH = PROJECT_ROOT / "benchmarks"


def test_a_stack_benchmark_without_the_stack_says_so(tmp_path) -> None:
    """One line naming what is down and the command to run, exit 1, not an MLflow/S3 traceback."""
    import os

    env = os.environ | {"SYNTHRAY_STATE_DIR": str(tmp_path / "no-stack")}  # a state dir no stack runs from
    proc = subprocess.run([sys.executable, str(BENCH / "http_load.py"), "--ratio-only"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Error: this benchmark needs the local stack (seaweedfs stopped, mlflow stopped, ray stopped): " \
           "run `make stack-up`" in proc.stderr
