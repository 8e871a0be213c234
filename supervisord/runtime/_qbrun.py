"""Bootstrap of a Python callback: ``python _qbrun.py FILE`` runs FILE as __main__ with qb."""

from __future__ import annotations

import importlib
import os
import runpy
import sys


def main() -> None:
    path = sys.argv[1]
    # The callback's own directory first, as if it had been started as `python FILE`;
    # the runtime directory (on PYTHONPATH) stays behind it, so `import qb` works too.
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    sys.argv = [path]
    qb = importlib.import_module("qb")
    runpy.run_path(path, init_globals={"qb": qb}, run_name="__main__")


if __name__ == "__main__":
    main()
