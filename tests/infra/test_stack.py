"""The local stack on real services: idempotent up, loopback only, clear errors."""

from __future__ import annotations

import psutil
import pytest

from infra.settings import Settings
from infra.stack import LocalStack, StackError

pytestmark = pytest.mark.stack


def test_up_twice_is_a_noop(stack: Settings) -> None:
    local = LocalStack(stack)
    before = {row["service"]: row["pid"] for row in local.status()}
    messages: list[str] = []
    local.up(progress=messages.append)
    after = {row["service"]: row["pid"] for row in local.status()}
    assert before == after
    assert all("already running" in m for m in messages), messages
    assert all(row["state"] == "ready" for row in local.status())


def test_everything_binds_loopback_only(stack: Settings) -> None:
    local = LocalStack(stack)
    pids: set[int] = set()
    for row in local.status():
        root = psutil.Process(int(row["pid"]))
        pids |= {root.pid, *(c.pid for c in root.children(recursive=True))}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert listening, "the stack listens on no port?"
    outside = [(c.pid, c.laddr) for c in listening if not c.laddr.ip.startswith(("127.", "::ffff:127."))]
    assert outside == []


def test_busy_port_gives_one_clear_line(stack: Settings, tmp_path) -> None:
    # A second stack on the same ports, other state dir: refuses with a hint, starts nothing.
    other = LocalStack(stack.model_copy(update={"state_dir": tmp_path}))
    with pytest.raises(StackError, match=r"seaweedfs: port \d+ on 127.0.0.1 is already in use"):
        other.up(progress=lambda _: None)
    assert all(row["state"] == "stopped" for row in other.status())


def test_missing_binary_is_named(stack: Settings, tmp_path, monkeypatch) -> None:
    import infra.stack as stack_module

    monkeypatch.setattr(stack_module, "_venv_bin", lambda name: f"/nonexistent/{name}")
    other = LocalStack(stack.model_copy(update={"state_dir": tmp_path}))
    with pytest.raises(StackError, match="executable '/nonexistent/weed' not found; run 'make setup'"):
        other.up(progress=lambda _: None)


def test_stale_pidfile_is_recovered(stack: Settings, tmp_path) -> None:
    other = LocalStack(stack.model_copy(update={"state_dir": tmp_path}))
    other.run_dir.mkdir(parents=True)
    # A pid file pointing at a live but unrelated process (this test) with another start time.
    (other.run_dir / "mlflow.json").write_text(
        '{"pid": %d, "create_time": 1.0, "argv": []}' % psutil.Process().pid
    )
    assert other.process("mlflow") is None
    assert not (other.run_dir / "mlflow.json").exists()
