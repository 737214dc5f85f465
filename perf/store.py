"""Which on-disk form for the per-request store? Write cost in the run, size, read time.

The same rows (loadgen's :data:`loadgen.store.REQUEST_DTYPE`, from synthetic records
of 8-token requests) are appended in batches of ``--batch`` — as the collector does
during a run — in each candidate form, then read back into a pandas DataFrame:

* ``npy``: loadgen's store (:class:`loadgen.store.RequestStore`): raw appends to a
  ``.npy`` file; read with a memory map;
* ``jsonl``: one orjson line per request;
* ``parquet``: ``pyarrow.parquet.ParquetWriter``, one row group per batch;
* ``arrow``: the Arrow IPC stream format (``pyarrow.ipc.new_stream``).

pyarrow is not a dependency of loadgen; the last two run when it is installed. Each
form also reports what importing its writer costs the client (resident memory and
time, measured in a fresh interpreter), since the client's memory budget includes it.

    python perf/store.py --rows 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.records import RequestRecord  # noqa: E402
from loadgen.store import RequestStore, StoreFiles, read_requests, request_rows  # noqa: E402

IMPORTS = {"npy": "import numpy", "jsonl": "import orjson", "parquet": "import pyarrow, pyarrow.parquet",
           "arrow": "import pyarrow, pyarrow.ipc"}


def records(n: int, start: int) -> list[RequestRecord]:
    out = []
    for i in range(start, start + n):
        sent = 10**12 + i * 100_000
        r = RequestRecord(prompt_id=i, input_len=16, output_len=8, intended_ns=sent, sent_ns=sent,
                          first_ns=sent + 2_000_000, last_ns=sent + 9_000_000, output_tokens=8,
                          output_tokens_source="usage", server_prompt_tokens=16, finish_reason="length", status=200)
        r.chunk_ns.extend(sent + 2_000_000 + k * 1_000_000 for k in range(8))
        r.chunk_tokens.extend([1] * 8)
        out.append(r)
    return out


def plain_rows(batch: np.ndarray) -> list[dict]:
    return [{k: (v.decode() if isinstance(v, bytes) else v.item()) for k, v in zip(batch.dtype.names, row, strict=True)}
            for row in batch]


def write(form: str, path: Path, batches: list[list[RequestRecord]]) -> float:
    """CPU seconds to append every batch (record → row conversion included)."""
    t0 = time.process_time()
    if form == "npy":
        store = RequestStore(StoreFiles(path, None, path.with_suffix(".details.jsonl")))
        for b in batches:
            store.append(b, 10**12)
        store.close()
    elif form == "jsonl":
        with open(path, "wb") as f:
            for b in batches:
                f.write(b"".join(orjson.dumps(r) + b"\n" for r in plain_rows(request_rows(b, 10**12))))
    else:
        import pyarrow as pa

        writer = None
        for b in batches:
            rows = request_rows(b, 10**12)
            table = pa.table({name: rows[name] for name in rows.dtype.names})
            if writer is None:
                if form == "parquet":
                    import pyarrow.parquet as pq

                    writer = pq.ParquetWriter(path, table.schema)
                else:
                    import pyarrow.ipc as ipc

                    writer = ipc.new_stream(str(path), table.schema)
            writer.write_table(table)
        writer.close()
    return time.process_time() - t0


def read(form: str, path: Path):
    import pandas as pd

    if form == "npy":
        return pd.DataFrame(np.asarray(read_requests(path)))
    if form == "jsonl":
        return pd.DataFrame([orjson.loads(line) for line in path.read_bytes().splitlines()])
    if form == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pandas()
    import pyarrow.ipc as ipc

    with ipc.open_stream(str(path)) as reader:
        return reader.read_all().to_pandas()


RSS = "int(open('/proc/self/statm').read().split()[1]) * 4"  # KiB resident now (ru_maxrss survives exec)


def import_cost(form: str) -> dict[str, float]:
    code = f"import time; t = time.perf_counter(); {IMPORTS[form]}; print(time.perf_counter() - t, {RSS})"
    base = f"print(0, {RSS})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    ref = subprocess.run([sys.executable, "-c", base], capture_output=True, text=True, check=True).stdout.split()
    return {"import_s": float(out[0]), "import_rss_mb": (int(out[1]) - int(ref[1])) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    forms = ["npy", "jsonl"]
    try:
        import pyarrow  # noqa: F401

        forms += ["parquet", "arrow"]
    except ImportError:
        print("pyarrow is not installed: parquet and arrow are skipped", file=sys.stderr)
    batches = [records(min(args.batch, args.rows - s), s) for s in range(0, args.rows, args.batch)]
    results: dict[str, list[dict]] = {f: [] for f in forms}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for form in forms:  # alternate, so that the forms share the machine's noise
                path = Path(tmp) / f"r{rep}.{form}"
                cpu = write(form, path, batches)
                t0 = time.perf_counter()
                frame = read(form, path)
                read_s = time.perf_counter() - t0
                assert len(frame) == args.rows
                row = {"write_cpu_s": cpu, "write_us_per_row": cpu / args.rows * 1e6,
                       "size_mb": path.stat().st_size / 2**20, "read_s": read_s}
                results[form].append(row)
                print(json.dumps({"form": form, "repeat": rep, **{k: round(v, 3) for k, v in row.items()}}),
                      flush=True)
    print(f"\nmedians of {args.repeat}, {args.rows:,} rows in batches of {args.batch}:")
    for form in forms:
        med = {k: round(statistics.median(r[k] for r in results[form]), 3) for k in results[form][0]}
        print(f"  {form:8s} {json.dumps({**med, **{k: round(v, 3) for k, v in import_cost(form).items()}})}")


if __name__ == "__main__":
    main()
