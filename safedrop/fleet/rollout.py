"""Which database starts when: the rollout's rules as a small state machine, with no Prefect in it.

The fleet flow asks ``next_to_start()`` what to start, starts those databases' child runs, and tells
``finish()`` how each ended; the rules live here, and tests drive them as plain functions:

- **Canaries first, alone.** The canaries go in the order the fleet file lists them, one at a time,
  and nothing else runs with one. No other database starts until every canary has succeeded (or was
  already done). A canary that stops or fails ends the rollout, whatever ``on_error`` says: that is
  what a canary is for.
- **Then at most ``max_parallel`` at once**, in the fleet file's order.
- **on_error: stop** — after a database stops or fails, no further database is started; those
  running finish. The rest are left untouched and reported as not started.
  **on_error: continue** — every database is attempted; the failures are reported.
- **Resume.** The plan says what each database is before the rollout starts: ``already-applied``
  ones (their ledger says the tables are gone) are skipped, taking no slot; ``stopped`` or ``failed``
  ones count as that outcome when their turn comes (so ``on_error`` treats a database the plan found
  unready like one whose run stopped); ``ready`` ones are started. Running the fleet again therefore
  skips what is done and retries what stopped or failed.

The plan itself uses the same machine with no canary, ``on_error: continue`` and every database ready:
at most ``max_parallel`` dry runs at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from safedrop.results import Status

OK: frozenset[str] = frozenset({"succeeded", "already-applied", "ready"})
OnError = Literal["stop", "continue"]


@dataclass
class Outcome:
    """How one database ended in the rollout (``started`` False: it was never started)."""

    status: Status
    started: bool
    reasons: list[str] = field(default_factory=list)


@dataclass
class Rollout:
    """The rollout's state: what is queued, running, finished, and whether it has halted."""

    order: list[str]
    canary: tuple[str, ...]  # in the order the fleet file lists them
    max_parallel: int
    on_error: OnError
    verdicts: dict[str, tuple[Status, list[str]]] = field(default_factory=dict)
    queue: deque[str] = field(init=False)
    running: set[str] = field(init=False, default_factory=set)
    outcomes: dict[str, Outcome] = field(init=False, default_factory=dict)
    halted_by: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.max_parallel < 1:
            raise ValueError("max_parallel must be at least 1")
        if len(set(self.order)) != len(self.order):
            raise ValueError("a database is listed twice")
        # canaries first, as listed; then the others in their order
        self.queue = deque([*self.canary, *(n for n in self.order if n not in self.canary)])

    @classmethod
    def of(
        cls,
        order: Iterable[str],
        *,
        canary: Iterable[str] = (),
        max_parallel: int,
        on_error: OnError,
        plan: Mapping[str, tuple[Status, list[str]]] | None = None,
    ) -> Rollout:
        """A rollout over ``order``; ``plan`` is each database's status from the plan (default: ready)."""
        return cls(list(order), tuple(canary), max_parallel, on_error, dict(plan or {}))

    # --- the questions the flow asks ----------------------------------------------------------------

    def next_to_start(self) -> list[str]:
        """The databases to start now (they count as running from here on)."""
        start: list[str] = []
        while self.queue and self.halted_by is None:
            if self._canary_running():
                break  # a canary runs alone, and the next database's turn comes after it
            name = self.queue[0]
            status, reasons = self.verdicts.get(name, ("ready", []))
            if status != "ready":  # already done, or the plan found it cannot go: no slot taken
                self.queue.popleft()
                self._record(name, Outcome(status, started=False, reasons=list(reasons)))
                continue
            if name in self.canary:
                if self.running:
                    break  # a canary starts alone
                self._start(name, start)
                break
            if len(self.running) >= self.max_parallel:
                break
            self._start(name, start)
        return start

    def finish(self, name: str, status: Status, reasons: Iterable[str] = ()) -> None:
        """A started database ended with ``status``."""
        if name not in self.running:
            raise ValueError(f"{name} is not running")
        self.running.discard(name)
        self._record(name, Outcome(status, started=True, reasons=list(reasons)))

    @property
    def done(self) -> bool:
        """Nothing runs and nothing more will start."""
        return not self.running and (self.halted_by is not None or not self.queue)

    def not_started(self) -> list[str]:
        """The databases left untouched because the rollout halted (in their order)."""
        return list(self.queue) if self.halted_by is not None else []

    def halt_reason(self) -> str:
        """Why the databases not started were not started."""
        if self.halted_by is None:
            return ""
        why = "a canary" if self.halted_by in self.canary else "on_error: stop"
        status = self.outcomes[self.halted_by].status
        return f"not started: the rollout stopped after {self.halted_by} {_said(status)} ({why})"

    # --- inside -------------------------------------------------------------------------------------

    def _canary_running(self) -> bool:
        return any(n in self.canary for n in self.running)

    def _start(self, name: str, start: list[str]) -> None:
        self.queue.popleft()
        self.running.add(name)
        start.append(name)

    def _record(self, name: str, outcome: Outcome) -> None:
        self.outcomes[name] = outcome
        if outcome.status in OK or self.halted_by is not None:
            return
        if name in self.canary or self.on_error == "stop":
            self.halted_by = name


def _said(status: Status) -> str:
    return {"stopped": "stopped", "failed": "failed"}.get(status, status)
