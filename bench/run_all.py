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
    "store_backup",  # pg_dump streamed into a local S3-API server vs dump-then-upload
    "lock_safety",  # its defaults include the recheck at ~1 GB of targets (--recheck-mb 1024)
    "restore_traffic",
    "live_traffic",
    "fleet",  # the orchestration's floor: 12 demo databases, children of ~2 s
    "fleet --databases 5 --max-parallel 2 --rows 40000000",  # the goal: children of ~25 s (2.7 GB each)
]


def main(argv: list[str]) -> int:
    runs = [r for r in ORDER if r.split()[0] in argv] if argv else ORDER
    failed = []
    for run in runs:
        name, *args = run.split()
        print(f"== bench/{name}.py {' '.join(args)}", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py"), *args])
        print(f"== bench/{name}.py finished in {time.monotonic() - start:.0f} s (exit {code})\n", flush=True)
        if code:
            failed.append(run)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
