"""Teacher client throughput: 400 requests at concurrency 32 against the local test server (200 ms latency).

Runs the real path: openai backend (AsyncOpenAI) in a LocalExecutor, against tests/teacher_server.py
serving the program teacher. Ideal wall time = requests x latency / concurrency; the ratio shows the
client's and server's overhead on top of that. Last line: one JSON object {"wall_s", "ideal_s", "ratio"}.

    .venv/bin/python scripts/bench_teacher.py [--requests 400] [--concurrency 32] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test server lives with the tests

from teacher_server import TeacherServer  # noqa: E402
from tutorloop.actors.teacher import LocalExecutor, TeacherRequest  # noqa: E402
from tutorloop.loop.config import TeacherSection  # noqa: E402
from tutorloop.loop.synthetic import generate_problems  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    questions = [e.question for e in generate_problems(args.requests, seed=0, min_steps=1, max_steps=3, max_value=9)]
    with TeacherServer(latency_s=args.latency) as server:
        cfg = TeacherSection.model_validate({
            "teachers": [{"name": "bench", "backend": "openai", "model": "program", "base_url": server.base_url}],
            "concurrency": args.concurrency, "timeout_s": 30.0})
        requests = [TeacherRequest(teacher="bench", backend="openai", model="program", api="chat",
                                   messages=[{"role": "user", "content": f"Q: {q}\nA: Let's think step by step."}],
                                   params={"temperature": 0.0, "max_tokens": 128}, sample_index=i)
                    for i, q in enumerate(questions)]
        with LocalExecutor(cfg) as executor:
            # one warm-up request opens the client and its connection pool outside the timing
            list(executor.execute([TeacherRequest(**{**requests[0].__dict__, "sample_index": -1})]))
            started = time.perf_counter()
            records = list(executor.execute(requests))
            wall = time.perf_counter() - started
        failed = [r for r in records if r["status"] != "ok"]
        if failed or len(records) != len(requests):
            raise SystemExit(f"bench_teacher: {len(failed)} of {len(records)} requests failed: {failed[:1]}")
        peak = server.max_in_flight
    ideal = max(args.requests * args.latency / args.concurrency, 1e-9)
    print(f"{args.requests} requests, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms, "
          f"peak in flight at the server {peak}")
    print(f"wall {wall:.3f} s, ideal {ideal:.3f} s, ratio {wall / ideal:.3f} (target <= 1.25)")
    print(json.dumps({"wall_s": round(wall, 4), "ideal_s": round(ideal, 4), "ratio": round(wall / ideal, 4)}))


if __name__ == "__main__":
    main()
