"""Letting the reactor run between slices of long work.

Long jobs in the core are generators that yield between slices
(steps.run_steps); the shell drives them with ``run_steps_async`` and the
pause made here, so RPC keeps answering while a large block is built, a
batch admitted or a branch checked.
"""

from twisted.internet.task import deferLater


def pause_for(clock):
    """A pause(): a Deferred that fires on the clock's next turn."""
    return lambda: deferLater(clock, 0, lambda: None)
