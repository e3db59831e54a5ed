"""Submissions per second from Python, for `ferry-bench sdk-submissions`:
``--runs`` one-step runs of the pipeline folder, with ``--mode threads``
submitted with ``client.submit`` from ``--threads`` threads sharing one
``ferry.Client`` (one gRPC channel, as ferry-bench shares one), with ``--mode
many`` by one ``client.submit_many`` call (one SubmitRuns stream). Prints one
JSON line: {"runs", "seconds", "per_second", "cpu_seconds"} (the process's
CPU time, all threads, over the same span); the clock
(``time.perf_counter``) runs from the first submission to the last answer,
after one warm-up submission.
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
    parser.add_argument("--mode", choices=["threads", "many"], default="threads")
    args = parser.parse_args()
    failures: list = []
    with ferry.Client(config=args.config) as client:
        client.submit(args.pipeline, no_cache=True)  # warm-up: connects, uploads the bundle
        cpu = time.process_time()
        if args.mode == "many":
            began = time.perf_counter()
            runs = client.submit_many(args.pipeline, [{}] * args.runs, no_cache=True)
            seconds = time.perf_counter() - began
            if len({run.id for run in runs}) != args.runs:
                raise SystemExit(f"submit_many answered {len(runs)} runs for {args.runs} submissions")
        else:
            seconds = submit_from_threads(client, args.pipeline, args.runs, args.threads, failures)
        cpu = time.process_time() - cpu
    if failures:
        raise SystemExit(f"{len(failures)} submissions failed, the first: {failures[0]}")
    print(json.dumps({"runs": args.runs, "seconds": seconds, "per_second": args.runs / seconds, "cpu_seconds": cpu}))


def submit_from_threads(client: ferry.Client, pipeline: str, runs: int, threads: int, failures: list) -> float:
    """Seconds ``threads`` threads take to submit ``runs`` runs, one
    ``client.submit`` at a time each."""
    left = [runs]
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                client.submit(pipeline, no_cache=True)
            except Exception as error:  # reported by the caller, counted as a failure
                failures.append(error)
                return

    workers = [threading.Thread(target=work) for _ in range(threads)]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - began


if __name__ == "__main__":
    main()
