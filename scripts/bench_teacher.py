"""Teacher client throughput: 400 requests at concurrency 32 against the local test server (200 ms latency).

Runs the real path: the openai backend (AsyncOpenAI, our limits and retries) in a LocalTeacherPool,
against tests/teacher_server.py serving the program teacher. The server runs in a process of its
own, as a real teacher would, so its threads do not share this process's interpreter lock with the
client being measured. Ideal wall time = requests x latency / concurrency; the ratio is the
overhead on top of that. Last line: one JSON object {"wall_s", "ideal_s", "ratio"}.

    .venv/bin/python scripts/bench_teacher.py [--requests 400] [--concurrency 32] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tutorloop.actors.teacher import LocalTeacherPool, TeacherRequest
from tutorloop.loop.core.synthetic import generate_problems
from tutorloop.loop.core.teacher_config import TeacherSection

SERVER = Path(__file__).resolve().parents[1] / "tests" / "teacher_server.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    args = parser.parse_args()
    questions = [e.question for e in generate_problems(args.requests, seed=0, min_steps=1, max_steps=3, max_value=9)]
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "--latency", str(args.latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            raise SystemExit(f"bench_teacher: the test server did not start (said {base_url!r})")
        cfg = TeacherSection.model_validate(
            {
                "teachers": [{"name": "bench", "backend": "openai", "model": "program", "base_url": base_url}],
                "concurrency": args.concurrency,
                "timeout_s": 30.0,
            }
        )
        requests = [
            TeacherRequest(
                teacher="bench",
                backend="openai",
                model="program",
                api="chat",
                messages=[{"role": "user", "content": f"Q: {q}\nA: Let's think step by step."}],
                params={"temperature": 0.0, "max_tokens": 128},
                sample_index=i,
            )
            for i, q in enumerate(questions)
        ]
        with LocalTeacherPool(cfg) as pool:
            # one warm-up request creates the client outside the timing
            list(pool.ask([TeacherRequest(**{**requests[0].__dict__, "sample_index": -1})]))
            started = time.perf_counter()
            records = [r for group in pool.ask(requests) for r in group]
            wall = time.perf_counter() - started
        server.stdin.close()
        counts = json.loads(server.stdout.readline())
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    failed = [r for r in records if r["status"] != "ok"]
    if failed or len(records) != len(requests):
        raise SystemExit(f"bench_teacher: {len(failed)} of {len(records)} requests failed: {failed[:1]}")
    ideal = args.requests * args.latency / args.concurrency
    print(
        f"{args.requests} requests, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms; "
        f"server saw {counts['calls'] - 1} requests, at most {counts['max_in_flight']} at once"
    )
    ratio = wall / ideal if ideal > 0 else float("inf")
    print(f"wall {wall:.3f} s, ideal {ideal:.3f} s, ratio {ratio:.3f} (target <= 1.25)")
    print(json.dumps({"wall_s": round(wall, 4), "ideal_s": round(ideal, 4), "ratio": round(ratio, 4)}))


if __name__ == "__main__":
    main()
