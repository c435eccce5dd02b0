"""One module per workload, each with ``run(make, params) -> {cell: figures}``.

``make(min_size, max_size, fake=False, delay=0.0)`` is a context manager that yields a started
implementation (see :func:`bench.child.make`). A workload runs inside a child process.
"""
