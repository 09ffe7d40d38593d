"""Work in slices: long jobs written as generators that yield between
slices, so a caller can let the reactor run in between (the shell's
``cooperate.pause``) while the core stays free of Twisted."""


def run_steps(steps):
    """Drive a generator of work slices to its end; its return value."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value


async def run_steps_async(steps, pause):
    """The same, awaiting pause() between slices (to let the reactor run)."""
    try:
        while True:
            next(steps)
            await pause()
    except StopIteration as done:
        return done.value
