"""Chaos, backend-down contract and soak runs against real servers, with a published report.

``python -m tests.chaos`` (what ``make chaos`` runs) drives 500 greenlets doing requests through
``@retry`` and a :class:`~geventconnpool.testing.FaultProxy` in front of a real ``redis-server``
and of the embedded PING server while faults happen, checks the backend-down timeout contract,
runs a soak with random faults, compares plain ``@retry`` with a shared ``RetryBudget`` under a
3 s outage (``--only budget``), lets 100,000 ``get()`` calls time out or be killed on an
exhausted pool (``--only exhaustion``: memory flat, no slot lost), makes each hook raise a
BaseException under load (``--only hooks``: no connect storm, no lost slot), and writes
``reports/chaos-latest.md`` and ``.json`` (and the figures in ``docs/reliability.rst``).
``--quick`` shortens every part; the quick variants also run as tests in ``make test``
(``tests/test_chaos_quick.py``, ``tests/test_backend_down.py``).
"""
