"""Seconds per phase of a run (data setup, fit, calibration, ...), for run.json and the log.

``osr.train`` opens one ``recording()`` per run; the code doing the work marks it with
``phase(name)``, a context manager or a decorator, wherever it sits (a Lightning callback
included), which logs the phase's start and end and adds its seconds to the run's record.
Outside a recording ``phase`` does nothing, so the same code run by ``osr.evaluate`` or a
test neither logs nor records.

A phase nested in another is counted once, as its own: its seconds are taken out of the
enclosing phase's (detector fitting runs inside calibration, which runs inside fit), so the
phases add up to the run's seconds less what falls outside every phase. A phase entered
again (the data setup of each OOD set) adds up.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class PhaseTimes:
    """Seconds per phase name, in the order the phases first started."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._nested: list[float] = []  # per open phase: the seconds of phases inside it

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        log.info("%s: started", name)
        self.seconds.setdefault(name, 0.0)
        self._nested.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            inside = self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed
            self.seconds[name] += elapsed - inside
            if inside:
                own = elapsed - inside
                log.info("%s: ended after %.1f s (%.1f s its own)", name, elapsed, own)
            else:
                log.info("%s: ended after %.1f s", name, elapsed)


_current: PhaseTimes | None = None


@contextmanager
def recording() -> Iterator[PhaseTimes]:
    """Record the phases run inside this block (one run)."""
    global _current
    outer, _current = _current, PhaseTimes()
    try:
        yield _current
    finally:
        _current = outer


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block (or the decorated function) as phase ``name`` of the current
    recording, if any."""
    times = _current
    if times is None:
        yield
        return
    with times.phase(name):
        yield
