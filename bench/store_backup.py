"""Benchmark: pg_dump streamed into object storage against the hand-run job (dump to a file, then upload).

    .venv/bin/python bench/store_backup.py                  # ~0.5 GB database, medians of 3
    .venv/bin/python bench/store_backup.py --size-gb 0.1 --repeat 1

Starts a throwaway PostgreSQL and a real S3-API server on localhost (moto's server mode, the one the
tests use), fills a database with bench/backup.py's realistic mix, then times, in the same run:

- hand-run: ``pg_dump -Fc -Z1`` to a file, then the same client (boto3, the same 16 MiB parts, the same
  proof on the store) uploading that file;
- ``dump_to_store``: pg_dump's stdout uploaded while pg_dump writes (no local file), its table of
  contents then read back from the stored object;
- raw ``pg_dump -Fc -Z1`` to a file alone, for the record.

Goal (issue 20): streamed ≤ 0.8× the hand-run job (the dump and the upload overlap). On localhost the
upload is bound by the server's CPU, which shares the machine's two cores with pg_dump: figures from a
real store on another machine differ. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from backup import DB, fill  # noqa: E402  (bench/backup.py: the realistic mix)

from safedrop.backup.storedump import dump_to_store, stored_toc  # noqa: E402
from safedrop.pg.database import database_from_url  # noqa: E402
from safedrop.pg.pgserver import LocalPostgres  # noqa: E402
from safedrop.pg.pgtools import find_pg_dump  # noqa: E402
from safedrop.store import s3 as store  # noqa: E402
from safedrop.store.location import S3Location  # noqa: E402
from tests.s3server import S3Server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="safedrop-bench-store-") as tmp, LocalPostgres() as pg:
        work = Path(tmp)
        server = S3Server(work / "moto.log").start()
        try:
            os.environ.update(server.env)
            fill(pg, args.size_gb)
            db = database_from_url(pg.url(DB))
            tools = find_pg_dump(int(pg.psql("SHOW server_version_num")))
            location = S3Location("bench-backups", "prod")
            s3 = store.client(location)
            s3.create_bucket(Bucket=location.bucket)
            env = {**os.environ, **db.libpq_env("pg_dump")}
            archive = work / "hand.dump"
            times: dict[str, list[float]] = {
                "raw pg_dump to a file": [],
                "hand-run: dump, then upload": [],
                "safedrop: streamed": [],
            }
            size = 0
            for i in range(args.repeat):
                t0 = time.monotonic()
                subprocess.run([str(tools.pg_dump), "-Fc", "-Z1", "-f", str(archive)], env=env, check=True)
                times["raw pg_dump to a file"].append(time.monotonic() - t0)
                archive.unlink()

                t0 = time.monotonic()
                subprocess.run([str(tools.pg_dump), "-Fc", "-Z1", "-f", str(archive)], env=env, check=True)
                with archive.open("rb") as f:
                    store.upload_stream(s3, location, f"hand-{i}.dump", f)
                times["hand-run: dump, then upload"].append(time.monotonic() - t0)
                archive.unlink()
                store.delete(s3, location.bucket, location.key(f"hand-{i}.dump"))

                t0 = time.monotonic()
                stored = dump_to_store(tools, db, location, f"ours-{i}.dump", compression=1, s3=s3)
                stored_toc(tools, s3, location, f"ours-{i}.dump")
                times["safedrop: streamed"].append(time.monotonic() - t0)
                size = stored.bytes
                store.delete(s3, location.bucket, location.key(f"ours-{i}.dump"))
        finally:
            server.stop()
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"\narchive {size / 1024**2:.0f} MiB, medians of {args.repeat}:")
    for name, seconds in median.items():
        print(f"  {name:<32} {seconds:7.2f} s  ({' '.join(f'{v:.2f}' for v in times[name])})")
    ratio = median["safedrop: streamed"] / median["hand-run: dump, then upload"]
    print(f"  streamed / hand-run = {ratio:.2f}× — goal ≤ 0.8×: {'met' if ratio <= 0.8 else 'MISSED'}")


if __name__ == "__main__":
    main()
