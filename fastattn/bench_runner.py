"""`python -m fastattn bench`: runs the repository's bench/ suite (an editable install or a checkout)."""
from __future__ import annotations

import os
import sys


def main(argv=None) -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "bench", "run.py")):
        print(f"bench/ not found next to the installed package ({root}); the benchmarks ship with the "
              "source checkout: clone the repository and `pip install -e .` there.", file=sys.stderr)
        return 2
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench.run import main as run_main
    return run_main(argv)
