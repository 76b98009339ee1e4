"""The bare transform loop in its own process, on every ``parts``-th image: for the machine's scaling ceiling.

    python bench/bare_loop.py MANIFEST.json PART PARTS [--fast]

Runs ``packer.transform.transform_image`` (the packer's per-image work, nothing
written) over images ``PART, PART + PARTS, ...`` of the manifest (train then
val, as written by ``benchmark.py``) and prints one JSON line:
``{"images": n, "seconds": loop wall time, "cpu": loop CPU time}``. The benchmark
starts PARTS of these at once: their throughput over the slowest one's loop
time is what the machine gives to PARTS independent processes, the ceiling of
any process-parallel packer (shared caches, memory bandwidth, turbo, SMT).
"""
import json
import sys
import time

from packer.transform import TransformSpec, transform_image


def main(argv: list[str]) -> int:
    manifest, part, parts = argv[0], int(argv[1]), int(argv[2])
    with open(manifest) as f:
        splits = json.load(f)
    paths = (splits["train"]["paths"] + splits["val"]["paths"])[part::parts]
    spec = TransformSpec(fast="--fast" in argv[3:])
    started, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        transform_image(path, spec)
    print(json.dumps({"images": len(paths), "seconds": time.perf_counter() - started,
                      "cpu": time.process_time() - cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
