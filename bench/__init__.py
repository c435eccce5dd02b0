"""Side-by-side benchmarks of geventconnpool against a bare queue and peer pools.

``python -m bench --help``. The parent (:mod:`bench.run`) starts the server and the children;
each child (:mod:`bench.child`) runs one workload (:mod:`bench.workloads`) on one
implementation (:mod:`bench.impls`); :mod:`bench.summary` computes ratios and targets and
:mod:`bench.render` writes them.
"""
