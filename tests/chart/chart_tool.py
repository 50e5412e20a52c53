"""Render or lint the Helm chart in a child process, printing JSON.

helm-python-sdk loads Helm's Go runtime into the calling process (its own threads and signal
handlers); the test suite's process is also a Ray driver, so the chart tests call this instead.

    python tests/chart/chart_tool.py render '<values json>'   -> {"files": {path: manifest}}
    python tests/chart/chart_tool.py lint '<values json>'     -> helm_python.lint's report
    python tests/chart/chart_tool.py rayjob '<JobRequest json>' -> {"manifest": services.cli.cluster.render_rayjob(...)}
Errors: {"error": message, "type": exception class name}, exit code 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(op: str, arg: str) -> dict:
    import helm_python

    payload = json.loads(arg)
    chart = str(REPO / "charts" / "synthray")
    try:
        if op == "render":
            loaded = helm_python.Chart.load(chart)
            try:
                return {"files": loaded.render(payload, name="sr", namespace="synthray")}
            finally:
                loaded.close()
        if op == "lint":
            return helm_python.lint(chart, payload["values"], strict=True, kube_version=payload["kube_version"])
        if op == "rayjob":
            from services.cli.cluster import JobRequest, render_rayjob

            return {"manifest": render_rayjob(JobRequest(**payload))}
        raise SystemExit(f"unknown op {op!r}")
    except helm_python.HelmError as err:
        return {"error": str(err), "type": type(err).__name__}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
