"""Project-wide plumbing that gessl, analysis and benchmarks import too: one-line user errors (``errors``), whole-file writes and JSON lines (``io``), signals (``interrupts``)."""
