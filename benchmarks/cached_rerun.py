"""Wall time of an unchanged flow's rerun through the CLI (every stage Cached).

Runs `python -m flows.cli run --preset P --out DIR` once to fill the run folder, then REPEATS more
times, timing each whole command (interpreter start, imports, Prefect, cache checks). Two modes:
- temporary server (PREFECT_API_URL unset): each command starts and stops its own Prefect server;
- with --server: a `prefect server start` kept running, as on a workstation or with a work pool.
Prefect's home is a fresh temporary folder, so nothing touches the user's database.

usage: python benchmarks/cached_rerun.py [--preset smoke] [--repeats 3] [--server] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

STATE = re.compile(r"^\s+(pretrain|adapt|classify)\s+(\w+)\s", re.M)


def run_cli(args: list[str], env: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"ulmfit run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return wall, dict(STATE.findall(proc.stdout))


@contextlib.contextmanager
def prefect_server(env: dict):
    """A Prefect server on a free port for the length of the block; yields its API URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(120):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--server", action="store_true", help="keep one Prefect server running")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ulmfit-rerun-") as tmp:
        env = {**os.environ, "PREFECT_HOME": f"{tmp}/prefect", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        cli = ["--preset", args.preset, "--out", f"{tmp}/run"] + [x for o in args.overrides for x in ("--set", o)]
        with (prefect_server(env) if args.server else contextlib.nullcontext()) as url:
            if url:
                env["PREFECT_API_URL"] = url
            first, states = run_cli(cli, env)
            print(json.dumps({"run": "first", "wall_s": round(first, 2), "states": states}), flush=True)
            walls = []
            for i in range(args.repeats):
                wall, states = run_cli(cli, env)
                if set(states.values()) != {"Cached"}:
                    sys.exit(f"rerun {i} was not fully cached: {states}")
                walls.append(wall)
                print(json.dumps({"run": f"rerun {i}", "wall_s": round(wall, 2), "states": states}), flush=True)
    print(json.dumps({"mode": "persistent server" if args.server else "temporary server", "preset": args.preset,
                      "first_s": round(first, 2), "rerun_median_s": round(statistics.median(walls), 2),
                      "rerun_min_s": round(min(walls), 2)}))


if __name__ == "__main__":
    main()
