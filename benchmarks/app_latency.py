"""App latency: start to serving, and upload to first streamed tokens and to all answers (targets: 10 s, 0.3 s, 1.0 s).

    python -m benchmarks.app_latency                 # the bundled tiny set, 10 comparisons after 1 warm-up
    python -m benchmarks.app_latency --models checkpoints/tiny/model_set.yaml --runs 20

Starts `python app.py --port P` as a subprocess and times it until `GET /` answers 200; then, with
`gradio_client`, submits the `/compare` endpoint on a bundled phantom example N times, one at a time, and times
each from submit (the upload included) to the first partial output with reasoning text in any column, and to
the final output. Prints medians and p90 with the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "chexreason" / "app" / "examples"
TARGETS = {"start": 10.0, "first": 0.3, "complete": 1.0}  # seconds (issue 5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, models: str | None, timeout: float) -> tuple[subprocess.Popen, float]:
    """Start `python app.py` and return it with the seconds until `GET /` answered 200."""
    command = [sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--models", models] if models else []
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise SystemExit(f"app.py exited with {process.returncode}:\n{process.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return process, time.perf_counter() - start
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    process.kill()
    raise SystemExit(f"app.py did not serve {url} within {timeout:.0f} s")


def stop_app(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def time_compare(client, image: str, **settings) -> tuple[float, float, dict]:
    """Seconds from submit to the first output with reasoning text and to the final output, and that output."""
    from gradio_client import handle_file

    start = time.perf_counter()
    job = client.submit(handle_file(image), **settings, api_name="/compare")
    first, last = None, None
    for outputs in job:  # outputs: preview, notice, (reasoning, labels) per checkpoint, agreement, result
        reasoning = outputs[2:-2:2]
        if first is None and any(isinstance(text, str) and text.strip() for text in reasoning):
            first = time.perf_counter() - start
        last = outputs
    complete = time.perf_counter() - start
    if last is None or not isinstance(last[-1], dict):
        raise SystemExit(f"/compare gave no final result: {last!r}")
    return (first if first is not None else float("nan")), complete, last[-1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ranked = sorted(values)
    return ranked[max(0, math.ceil(q / 100 * len(ranked)) - 1)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(name: str, values: list[float], target: float) -> None:
    median = statistics.median(values)
    verdict = "meets" if median <= target else "MISSES"
    print(
        f"{name:<22} median {median:6.3f} s   p90 {percentile(values, 90):6.3f} s   "
        f"min {min(values):6.3f} s   max {max(values):6.3f} s   ({verdict} target ≤ {target} s, n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="model set for app.py --models (default: the app's, the bundled tiny set)")
    parser.add_argument("--runs", type=int, default=10, help="timed comparisons (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed comparisons first (default 1)")
    parser.add_argument("--starts", type=int, default=1, help="app starts to time (default 1)")
    parser.add_argument("--image", help="image to compare (default: the first bundled example phantom)")
    parser.add_argument("--max_new_tokens", type=int, help="default: the endpoint's own default")
    parser.add_argument("--start_timeout", type=float, default=120.0)
    args = parser.parse_args()

    examples = json.loads((EXAMPLES / "examples.json").read_text())
    image = args.image or str(EXAMPLES / examples[0]["file"])
    settings = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}

    starts, process = [], None
    for i in range(args.starts):
        port = free_port()
        process, seconds = start_app(port, args.models, args.start_timeout)
        starts.append(seconds)
        if i < args.starts - 1:
            stop_app(process)
    assert process is not None

    try:
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False, analytics_enabled=False)
        for _ in range(args.warmup):
            time_compare(client, image, **settings)
        firsts, completes, result = [], [], {}
        for _ in range(args.runs):
            first, complete, result = time_compare(client, image, **settings)
            firsts.append(first)
            completes.append(complete)
        client.close()
    finally:
        stop_app(process)

    import torch  # only now: importing it earlier would compete with the app for the CPU

    threads = os.environ.get("OMP_NUM_THREADS")
    print(
        f"machine: {os.cpu_count()} cores, {cpu_model()}, {platform.machine()}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads by default" + (f" (OMP_NUM_THREADS={threads})" if threads else "")
    )
    checkpoints = result.get("checkpoints", {})
    answers = ", ".join(
        f"{name}: {len(c.get('text') or '')} chars, {'parsed' if c.get('parseable') else 'unparseable'}"
        for name, c in checkpoints.items()
    )
    print(f"models: {args.models or 'app default'}; image {Path(image).name}; last answers: {answers}")
    report("app start → GET / 200", starts, TARGETS["start"])
    report("first streamed tokens", [f for f in firsts if f == f] or [float("nan")], TARGETS["first"])
    report("all answers complete", completes, TARGETS["complete"])
    if any(f != f for f in firsts):
        print(f"note: {sum(f != f for f in firsts)} run(s) streamed no reasoning text before the end")


if __name__ == "__main__":
    main()
