"""``python -m bench.prepare``: install geventconnpool 0.2.1 where only its bench child finds it.

It goes into ``bench/.cache/gcp021`` (gitignored) with ``pip install --target --no-deps``, never
into the environment, where it would collide with this repository's ``geventconnpool``. This is
the only step of the bench that installs anything; ``python -m bench`` itself never does.
"""

from __future__ import annotations

import subprocess
import sys

from bench.impls import GCP021_DIR


def installed() -> bool:
    """Is 0.2.1 already in the cache directory?"""
    return (GCP021_DIR / "geventconnpool" / "pool.py").is_file()


def main() -> int:
    """Install 0.2.1 into the cache unless it is there; exit status of pip (0 if nothing to do)."""
    if installed():
        print(f"geventconnpool 0.2.1 already in {GCP021_DIR}")
        return 0
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-compile",
        "--target",
        str(GCP021_DIR),
        "geventconnpool==0.2.1",
    ]
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
