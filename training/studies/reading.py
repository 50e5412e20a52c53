"""A reader's session: which image is next, the per-image clock, and storing an answer.

Stateless on purpose: everything is derived from the study and the reader's answer objects in
S3, so closing the browser, a reload, a second tab or a replica restart all continue at the
first unanswered image of the reader's own order.

* **Order**: the study's images shuffled by a ``random.Random`` seeded with
  sha256(study id, reader id): the same reader always gets the same order, two readers
  different ones, and nobody can predict it without the study id.
* **Time limit**: the clock of an image starts when the reader is first shown it (a *view*
  object, written once), so a reload does not reset it. An answer that arrives after the limit
  (plus :data:`GRACE_S` for the round trip) is stored as "no answer"; an image whose time ran out
  while the reader was away is recorded as "no answer" when they come back.
* **Truth** is never read here: nothing a reader's page shows depends on it.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Any

from infra.errors import BadInput, Conflict
from training.studies.store import Study, StudyStore

ANSWERS = ("real", "synthetic")
GRACE_S = 2.0


def reader_order(study_id: str, reader_id: str, image_ids: list[str]) -> list[str]:
    """The reader's fixed, private permutation of the study's images."""
    seed = int.from_bytes(hashlib.sha256(f"{study_id}/{reader_id}".encode()).digest()[:8], "big")
    order = sorted(image_ids)
    random.Random(seed).shuffle(order)
    return order


@dataclass(frozen=True)
class Position:
    """Where a reader stands: what the page shows (no truth, no other reader)."""

    study_id: str
    reader_id: str
    total: int
    answered: int
    image_id: str | None  # the next image, None when done or closed
    remaining_s: float | None  # of the time limit for image_id, None without a limit
    closed: bool

    @property
    def done(self) -> bool:
        return self.image_id is None

    def public(self) -> dict[str, Any]:
        """The reader's JSON: progress and the next image id only."""
        return {"answered": self.answered, "total": self.total, "done": self.done, "closed": self.closed,
                "image_id": self.image_id, "remaining_s": self.remaining_s}


class ReaderSession:
    """One reader of one study, on a :class:`StudyStore`."""

    def __init__(self, studies: StudyStore, study: Study, reader_id: str, clock=time.time) -> None:
        self.studies, self.study, self.reader_id = studies, study, reader_id
        study.reader(reader_id)  # NotFound for a stranger
        self.order = reader_order(study.study_id, reader_id, study.images)
        self.clock = clock

    def position(self, mark_view: bool = True) -> Position:
        """The next unanswered image; records the first view of it (the time limit's clock)."""
        sid, closed = self.study.study_id, self.studies.closed(self.study.study_id) is not None
        answered = self.studies.answered(sid, self.reader_id)
        while True:
            pending = [i for i in self.order if i not in answered]
            if closed or not pending:
                return Position(sid, self.reader_id, len(self.order), len(answered & set(self.order)), None, None,
                                closed)
            image = pending[0]
            remaining = None
            if mark_view:  # the page shows it now: start its clock (elapsed time, time limit)
                now = self.clock()
                shown = self.studies.first_view(sid, self.reader_id, image, now)
                remaining = None if not self.study.time_limit_s else self.study.time_limit_s - (now - shown)
                if remaining is not None and remaining <= 0:  # ran out while the reader was away
                    self._store(image, None, None, shown, now, timeout=True, client_elapsed_s=None)
                    answered.add(image)
                    continue
            return Position(sid, self.reader_id, len(self.order), len(answered & set(self.order)), image,
                            remaining, closed)

    def answer(self, image_id: str, answer: str | None, confidence: int | None = None,
               client_elapsed_s: float | None = None) -> bool:
        """Store the reader's answer for ``image_id`` (None = timeout); True when newly stored.

        A second answer for the same image (double click, retry) changes nothing and returns False.
        """
        if image_id not in self.order:
            raise BadInput("image_id: not an image of this study", field="image_id")
        if answer is not None and answer not in ANSWERS:
            raise BadInput(f"answer: must be one of {', '.join(ANSWERS)} (or none for a timeout)", field="answer")
        if confidence is not None and not 1 <= confidence <= 5:
            raise BadInput("confidence: must be 1 to 5", field="confidence")
        if self.studies.closed(self.study.study_id) is not None:
            raise Conflict(f"study {self.study.study_id} is closed; answers are no longer taken")
        now = self.clock()
        shown = self.studies.first_view(self.study.study_id, self.reader_id, image_id, now)
        limit = self.study.time_limit_s
        late = limit is not None and now - shown > limit + GRACE_S
        if late or answer is None:
            return self._store(image_id, None, None, shown, now, timeout=True, client_elapsed_s=client_elapsed_s)
        return self._store(image_id, answer, confidence, shown, now, timeout=False, client_elapsed_s=client_elapsed_s)

    def _store(self, image_id: str, answer: str | None, confidence: int | None, shown: float, now: float, *,
               timeout: bool, client_elapsed_s: float | None) -> bool:
        body = {"reader_id": self.reader_id, "image_id": image_id, "answer": answer, "confidence": confidence,
                "timeout": timeout, "shown_at": shown, "answered_at": now, "elapsed_s": round(now - shown, 3),
                "client_elapsed_s": client_elapsed_s}
        return self.studies.put_answer(self.study.study_id, self.reader_id, image_id, body)
