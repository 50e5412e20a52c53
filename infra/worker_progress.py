"""A progress bar on the driver for work that runs in Ray workers (training epochs and steps).

Ray workers' own output stays in the log files by default (:func:`infra.ray_runtime.connect`),
so a worker cannot draw on the user's console. Instead rank 0 sends small progress events
through a ``ray.util.queue.Queue`` (a 0-CPU actor, so it never takes a training slot) and the
driver draws them with :func:`infra.progress.bar`:

    with WorkerProgress("train", unit="step") as relay:    # driver
        config["progress"] = relay.sink                    # picklable; None when --quiet
        trainer.fit()

    send(config["progress"], done=12, total=400, info="epoch 1/5 · 31 img/s")   # rank 0

Events are dropped rather than ever blocking a worker (a full or vanished queue is ignored),
and a worker sends at most one per :data:`SEND_EVERY_S` (plus the ones it forces at the end of
an epoch), so the relay costs one small actor call per second.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from infra.progress import bar, verbosity

SEND_EVERY_S = 1.0
_MAX_QUEUED = 1000


class WorkerProgress:
    """Driver side: a 0-CPU queue actor and a thread that draws its events as one :class:`~infra.progress.Bar`."""

    def __init__(self, description: str, unit: str = "it") -> None:
        self.description, self.unit = description, unit
        self.sink = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WorkerProgress:
        if verbosity() == "quiet":
            return self  # sink None: workers send nothing
        from ray.util.queue import Queue

        self.sink = Queue(maxsize=_MAX_QUEUED, actor_options={"num_cpus": 0})
        self._bar_cm = bar(self.description, unit=self.unit)
        self._bar = self._bar_cm.__enter__()
        self._thread = threading.Thread(target=self._drain, name="worker-progress", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                event = self.sink.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            except Exception:  # noqa: BLE001 - the queue actor is gone (cluster shutting down): stop drawing
                return
            self._bar.update(event["done"], event.get("total"), event.get("info"))

    def __exit__(self, *exc: Any) -> None:
        if self.sink is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._bar_cm.__exit__(*exc)
        finally:
            self.sink.shutdown(force=True)


class Sender:
    """Worker side: throttled events into a :class:`WorkerProgress`'s sink that never wait on the network.

    Each event is a fire-and-forget call on the queue's actor; the replies of earlier calls are
    collected only when they have already arrived (``ray.wait(timeout=0)``), so a training step
    never blocks on the driver. Best effort: a full queue drops the event, a gone queue stops
    sending, and more than ``_MAX_IN_FLIGHT`` unanswered events skip new ones.
    """

    _MAX_IN_FLIGHT = 8

    def __init__(self, sink) -> None:
        self.sink, self._last = sink, 0.0
        self._in_flight: list = []

    def __call__(self, done: int, total: int, info: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if self.sink is None or (not force and now - self._last < SEND_EVERY_S):
            return
        self._reap()
        if len(self._in_flight) >= self._MAX_IN_FLIGHT:
            return
        self._last = now
        try:
            self._in_flight.append(self.sink.actor.put_nowait.remote({"done": done, "total": total, "info": info}))
        except Exception:  # noqa: BLE001 - progress is best effort; training never waits on it
            self.sink = None

    def _reap(self) -> None:
        """Collect the replies that are already here (a Full queue's error included); never waits."""
        import ray

        if not self._in_flight:
            return
        ready, self._in_flight = ray.wait(self._in_flight, num_returns=len(self._in_flight), timeout=0)
        for ref in ready:
            try:
                ray.get(ref)
            except Exception:  # noqa: BLE001 - a full queue dropped this event
                pass


__all__ = ["SEND_EVERY_S", "Sender", "WorkerProgress"]
