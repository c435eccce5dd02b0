"""Run the PostgreSQL scenarios with pg8000 (pure Python) under gevent's monkey-patching.

``python -m tests.contrib.pg8000_run HOST PORT`` prints the results as one JSON line.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from tests.contrib.pg_scenarios import main  # noqa: E402

main(sys.argv[1:])
