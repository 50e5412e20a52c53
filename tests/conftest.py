"""Shared fixtures. Integration tests run against a *real* local stack.

The ``stack`` fixture starts SeaweedFS, an MLflow server and a Ray head in a private state
directory on free loopback ports, exports the matching ``SYNTHRAY_*`` variables (so Ray
workers and CLI subprocesses see the same stack) and tears it all down at the end. It never
touches the developer's own stack under ``.synthray/``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

from infra.settings import PROJECT_ROOT, Settings, get_settings
from infra.stack import LocalStack, port_in_use


def _free(port: int) -> bool:
    return not port_in_use("127.0.0.1", port)


_rng = random.Random(os.getpid())
_taken: set[int] = set()


def _free_ports(count: int, with_grpc: bool) -> list[int]:
    """``count`` free ports in 20000–29999 (and port+10000 free too when ``with_grpc``).

    Each port comes with three free neighbours (Ray uses port+1 … port+3).
    """
    chosen: list[int] = []
    while len(chosen) < count:
        port = _rng.randrange(20000, 29990)
        block = [port + i for i in range(4)]
        if with_grpc:
            block += [p + 10000 for p in block]
        if all(_free(p) for p in block) and not set(block) & _taken:
            chosen.append(port)
            _taken.update(block)
    return chosen


def _stack_env(state: Path) -> dict[str, str]:
    s3, master, volume, filer = _free_ports(4, with_grpc=True)
    mlflow, ray = _free_ports(2, with_grpc=False)
    serve = _free_ports(1, with_grpc=False)[0]
    return {
        "SYNTHRAY_STATE_DIR": str(state),
        "SYNTHRAY_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3}",
        "SYNTHRAY_WEED_MASTER_PORT": str(master),
        "SYNTHRAY_WEED_VOLUME_PORT": str(volume),
        "SYNTHRAY_WEED_FILER_PORT": str(filer),
        "SYNTHRAY_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow}",
        "SYNTHRAY_RAY_ADDRESS": f"127.0.0.1:{ray}",
        "SYNTHRAY_SERVE_PORT": str(serve),
        "SYNTHRAY_BUCKET": "synthray-test",
    }


@pytest.fixture(scope="session")
def stack() -> Settings:
    """Settings of a running, private local stack (started once per test session)."""
    state = Path(tempfile.mkdtemp(prefix="srt-"))
    env = _stack_env(state)
    # FID weights are provisioned once per checkout (make setup); share them, read-only.
    torch_home = state / "torch"
    shared = PROJECT_ROOT / ".synthray" / "torch"
    if shared.exists():
        torch_home.symlink_to(shared, target_is_directory=True)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    settings = get_settings()
    local = LocalStack(settings)
    try:
        local.up(progress=lambda msg: print(f"[test stack] {msg}"))
        yield settings
    finally:
        _disconnect_ray()
        local.down(progress=lambda msg: print(f"[test stack] {msg}"), graceful=False)  # throwaway data
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        shutil.rmtree(state, ignore_errors=True)


def _disconnect_ray() -> None:
    stop_serve_router_loop()
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass


def stop_serve_router_loop(timeout_s: float = 10.0) -> bool:
    """Stop the event loop thread that a ``DeploymentHandle`` call starts in this process.

    Serve runs a driver's handle calls on one daemon thread (``SingletonThreadRouter``) that
    ``serve.shutdown()`` and ``ray.shutdown()`` leave running: every 5 s it records Ray metrics
    (``EventLoopMonitor``) and its long-poll client calls the controller, through whichever core
    worker this process has at that moment. Across the test session's Ray shutdowns and reconnects
    (Flower's simulation ends with ``ray.shutdown()``) that is the pattern of ray-project/ray#31145,
    and CI's stop 35 ended in a segfault at interpreter exit after "1106 passed" with this thread
    alive. There is no public API for it (Ray 2.60), so this stops it through the class's loop.

    Returns:
        whether a loop was running and is now stopped.
    """
    import asyncio
    import threading

    try:
        from ray.serve._private.router import SingletonThreadRouter
    except ImportError:
        return False
    with SingletonThreadRouter._asyncio_loop_creation_lock:
        loop = SingletonThreadRouter._asyncio_loop
        if loop is None:
            return False
        SingletonThreadRouter._asyncio_loop = None
        SingletonThreadRouter._event_loop_monitor = None

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout=timeout_s)
    loop.call_soon_threadsafe(loop.stop)
    for thread in threading.enumerate():
        if thread.name.endswith("(_run_router_event_loop)"):
            thread.join(timeout=timeout_s)
            if thread.is_alive():
                raise RuntimeError(f"Serve's router loop thread {thread.name} did not stop in {timeout_s} s")
    loop.close()
    return True


@pytest.fixture
def driver_handles(stack: Settings):
    """For a test that calls Serve through a ``DeploymentHandle`` in this process: afterwards,
    Serve's router loop thread is stopped (see :func:`stop_serve_router_loop` for why)."""
    yield
    stop_serve_router_loop()


@pytest.fixture(scope="session")
def store(stack: Settings):
    from infra.object_store import ObjectStore

    return ObjectStore(stack)


@pytest.fixture
def s3_only():
    """A throwaway SeaweedFS (nothing else) that a test may kill: settings, env, stack."""
    from infra.settings import Settings as Fresh

    state = Path(tempfile.mkdtemp(prefix="srt-s3-"))
    env = _stack_env(state)
    settings = Fresh(**{k.removeprefix("SYNTHRAY_").lower(): v for k, v in env.items()})
    local = LocalStack(settings)
    try:
        local.up(progress=lambda msg: print(f"[s3-only] {msg}"), only=["seaweedfs"])
        yield settings, env, local
    finally:
        local.down(progress=lambda _: None, only=["seaweedfs"], graceful=False)  # throwaway data
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def catalog(stack: Settings):
    """A catalog on its own ObjectStore instance, so fault injection stays test-local."""
    from training.catalog.store import Catalog
    from infra.object_store import ObjectStore

    store = ObjectStore(stack)
    store.ensure_bucket()
    return Catalog(store)


@pytest.fixture(scope="session")
def free_cpus(stack: Settings):
    """``free_cpus(n)``: wait (≤ 120 s) until the stack's Ray cluster has ``n`` CPUs free.

    A test that needs the whole cluster (2 DDP workers, Flower's site actors) would otherwise
    hang until pytest's timeout if an earlier test's actors were still being torn down, and say
    nothing about why. On timeout it fails naming the live actors and what they hold.
    """
    import time

    from infra.ray_runtime import connect

    def wait(n: float, timeout_s: float = 120.0) -> None:
        import ray

        connect(stack)
        deadline = time.monotonic() + timeout_s
        while ray.available_resources().get("CPU", 0.0) < n:
            if time.monotonic() > deadline:
                from ray.util.state import list_actors

                alive = [f"{a.class_name} (pid {a.pid}, {a.required_resources})"
                         for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)]
                pytest.fail(f"{ray.available_resources().get('CPU', 0.0)} of {n} CPUs free after {timeout_s:.0f} s; "
                            f"live actors: {alive or 'none'}", pytrace=False)
            time.sleep(1.0)

    return wait
