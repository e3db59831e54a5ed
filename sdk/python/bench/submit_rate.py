"""Submissions per second from Python, for `ferry-bench sdk-submissions`:
``--runs`` one-step runs of the pipeline folder submitted with
``client.submit`` from ``--threads`` threads sharing one ``ferry.Client``
(one gRPC channel, as ferry-bench shares one). Prints one JSON line:
{"runs", "seconds", "per_second"}; the clock (``time.perf_counter``) runs
from the first submission to the last answer, after one warm-up submission.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import ferry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    with ferry.Client(config=args.config) as client:
        client.submit(args.pipeline, no_cache=True)  # warm-up: connects, uploads the bundle
        left = [args.runs]
        lock = threading.Lock()
        failures: list = []

        def work() -> None:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                try:
                    client.submit(args.pipeline, no_cache=True)
                except Exception as error:  # reported below, counted as a failure
                    failures.append(error)
                    return

        threads = [threading.Thread(target=work) for _ in range(args.threads)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
    if failures:
        raise SystemExit(f"{len(failures)} submissions failed, the first: {failures[0]}")
    print(json.dumps({"runs": args.runs, "seconds": seconds, "per_second": args.runs / seconds}))


if __name__ == "__main__":
    main()
