"""Side-by-side benchmarks of geventconnpool against a bare queue, no pool, and peer pools.

Run ``python -m bench --help``. The parent process (:mod:`bench.run`) never imports gevent's
monkey patching; each implementation runs in its own child process (:mod:`bench.worker`).
"""
