"""Background batch prefetch: a daemon thread makes the coming steps' micro-batches while the
trainer computes the current one.

A step's micro-batches are a pure function of (seed, step, rows) (data/tokens.py
`TokenData.train_batch`), so making them ahead changes nothing the run computes: the thread
calls the same `make(step)` the trainer would, step after step from the step it starts at
(a resumed run's), and `get(step)` hands them over in that order, refusing any other step.

- bounded: at most `depth` steps wait in the queue (default 2), so memory stays two steps'
  batches and the thread blocks when it is ahead;
- CUDA: each tensor is copied into pinned (page-locked) host memory in the thread, so the
  trainer's `.to(device, non_blocking=True)` is an asynchronous copy;
- errors: an exception in the thread is handed over in the queue and raised again by `get`
  in the trainer, the same object with the thread's traceback (a disk error stays an OSError
  for runs/failures.py);
- stopping: `close()` (also on leaving the `with` block, however it is left: the run's end,
  an exception, Preempted after a stop signal) sets a stop flag, empties the queue so a
  blocked `put` returns, and joins the thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import torch

DEPTH = 2
"""Steps made ahead of the trainer (the queue's bound)."""
POLL_S = 0.1
"""How often a blocked thread looks at the stop flag (seconds)."""

Batches = list[tuple[torch.Tensor, ...]]


class Prefetcher:
    """Makes `make(step)` for steps start, start + 1, ..., end - 1 on a daemon thread."""

    def __init__(self, make: Callable[[int], Batches], start: int, end: int, pin: bool = False,
                 depth: int = DEPTH):
        self.make, self.pin, self.next_step = make, pin, start
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(start, end), daemon=True,
                                       name="modexp-prefetch")
        self.thread.start()

    def _produce(self, start: int, end: int) -> None:
        try:
            for step in range(start, end):
                batches = self.make(step)
                if self.pin:
                    batches = [tuple(t.pin_memory() for t in b) for b in batches]
                if not self._put((step, batches, None)):
                    return
        except BaseException as exc:  # noqa: BLE001 (handed to the trainer, which raises it)
            self._put((None, None, exc))

    def _put(self, item) -> bool:
        """Queue `item`, waiting for room; False once stopped."""
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, step: int) -> Batches:
        """Step `step`'s micro-batches: the thread's next; its exception re-raised here."""
        if step != self.next_step:
            raise RuntimeError(f"prefetch: asked for step {step}, the thread makes step "
                               f"{self.next_step} next (steps are taken in order)")
        while True:
            try:
                got, batches, exc = self.queue.get(timeout=POLL_S)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError(f"prefetch: the thread ended before step {step}") from None
        if exc is not None:
            raise exc  # itself, with the thread's traceback: the runner classifies it by type
        self.next_step = got + 1
        return batches

    def close(self) -> None:
        """Stop the thread and wait for it (a blocked put sees the flag within POLL_S)."""
        self.stopped.set()
        while self.thread.is_alive():
            try:
                while True:
                    self.queue.get_nowait()
            except queue.Empty:
                pass
            self.thread.join(POLL_S)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def use_prefetch(setting: bool | str, device: torch.device) -> bool:
    """train.prefetch: true, false, or auto (on for CUDA only: on the CPU the thread competes
    with the step's own threads for the same cores; docs/performance.md)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)
