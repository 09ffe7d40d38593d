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


async def run_steps_async(steps, pause, jobs=None):
    """The same, awaiting pause() between slices (to let the reactor run).

    A slice may yield a job (an object with ``offload`` true, such as
    jmt.TreeJob): jobs(job) is awaited for its result, which the generator
    receives; without jobs, or when jobs fails, it receives None and does
    the work itself."""
    result = None
    try:
        while True:
            item = steps.send(result)
            result = None
            if getattr(item, "offload", False) and jobs is not None:
                try:
                    result = await jobs(item)
                except Exception:
                    result = None  # the worker is gone or failed: done in process
            else:
                await pause()
    except StopIteration as done:
        return done.value
