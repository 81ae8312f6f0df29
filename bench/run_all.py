"""`make bench`: every benchmark in turn, each printing its figures as ratios against the raw tool.

.venv/bin/python bench/run_all.py [name ...]     # e.g. code_scan dependency_scan
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "cli_speed",
    "code_scan",
    "dependency_scan",
    "backup",
    "lock_safety",
    "restore_traffic",
    "live_traffic",
    "fleet",
]


def main(argv: list[str]) -> int:
    names = argv or [n for n in ORDER if (HERE / f"{n}.py").exists()]
    failed = []
    for name in names:
        print(f"== bench/{name}.py", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py")])
        print(f"== bench/{name}.py finished in {time.monotonic() - start:.0f} s (exit {code})\n", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
