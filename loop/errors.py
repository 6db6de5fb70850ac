"""Expected failures of a run, reported as one line by the CLI (kept free of heavy imports)."""


class RunError(RuntimeError):
    """A run cannot go on as asked (exists already, config changed since it started, no history)."""
