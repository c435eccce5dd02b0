"""Child entry point: ``python -m bench.worker '<json job>'``.

Monkey-patches before anything else is imported, as a gevent application does, so that
threading-based pools (generic-connection-pool, redis-py, SQLAlchemy) become cooperative.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from bench.child import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
