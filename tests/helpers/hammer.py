"""A client hammering the HTTP API for the limits tests, in its own process (its requests must
not share the aggregator's event loop, or the test would measure the GIL, not the limit).

    python -m tests.helpers.hammer BASE_URL PATH BEARER_TOKEN THREADS

sends GET PATH with the token from THREADS threads, back to back, until a line arrives on stdin;
then prints one JSON line: {"status": {code: count}, "retry_after": [values seen]}.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter

import httpx


def main(base: str, path: str, token: str, threads: int) -> None:
    status: Counter[int] = Counter()
    retry_after: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def hammer() -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as c:
            while not stop.is_set():
                r = c.get(path, timeout=30)
                with lock:
                    status[r.status_code] += 1
                    if "retry-after" in r.headers:
                        retry_after.add(r.headers["retry-after"])

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for w in workers:
        w.start()
    print("hammering", flush=True)
    sys.stdin.readline()
    stop.set()
    for w in workers:
        w.join()
    print(json.dumps({"status": dict(status), "retry_after": sorted(retry_after)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
