"""Web UI benchmark: start-up, latency of a live-streamed generation, and 20 concurrent requests.

1. Starts `python -m nextscale.ui` (the bundled demo, CPU) on a free loopback port: seconds until the
   page answers, and until the model is loaded.
2. Latency through the page's own API (gradio_client, as the browser's queue): a generation of 4 demo
   images with the coarse-to-fine progression streamed after every scale; median over `--latency-runs`
   of the time to the first streamed scale and to the final images (client side), and the sampling time
   the server reports; side by side (interleaved) with `generate` of the same 4 images with their
   progression in this process, on the same number of threads: the UI's overhead as a ratio.
3. Load: `--requests` requests (4 images each) sent at once from as many threads; all must complete
   without an error, queued behind the model's single sampling slot (the waits the server reports), and
   the server's resident memory after they finish is compared with its memory before (target: < 10%
   growth).

Run: `python bench/ui.py` (about 1 minute on 2 CPU cores).
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import tyro
from gradio_client import Client

PROMPTS = ["a man with a beard and glasses on a blue background", "a woman with red hair on a green background",
           "a smiling man with black hair", "a woman with glasses and blond hair on a yellow background"]


@dataclass(frozen=True)
class BenchArgs:
    """Measure the web UI's start-up, streamed latency and behaviour under concurrent requests."""

    requests: int = 20
    """Requests sent at once in the load test."""
    images: int = 4
    """Images per request."""
    latency_runs: int = 5
    """Sequential generations timed for the latency figures."""
    concurrency: int = 1
    """The server's --concurrency (samplings at once per model)."""
    threads: int = 1
    """torch threads of the server and of the in-process baseline (0: torch's default, one per core)."""
    timeout: float = 600.0
    """Seconds allowed for the whole load test."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (MB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(args: BenchArgs, log: Path) -> tuple[subprocess.Popen, str, float, float]:
    """The server process, its URL, seconds until the page answered and until the model was loaded."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    command = [sys.executable, "-m", "nextscale.ui", "--port", str(port), "--device", "cpu", "--concurrency",
               str(args.concurrency), "--threads", str(args.threads)]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    page = loaded = None
    while time.perf_counter() - started < 300 and loaded is None:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        if page is None and answers(url):
            page = time.perf_counter() - started
        if loaded is None and "model demo loaded" in log.read_text():
            loaded = time.perf_counter() - started
        time.sleep(0.05)
    if page is None or loaded is None:
        process.kill()
        raise RuntimeError(f"the server did not start within 300 s:\n{log.read_text()}")
    return process, url, page, loaded


def request_args(prompt: str, images: int, seed: int) -> list[object]:
    # prompt, images per prompt, seed, cfg, schedule, guidance off for the last, top-k, top-p, temperature
    return [prompt, images, seed, 4.0, "linear", 0, 900, 0.95, 1.0]


@dataclass
class Timed:
    first_scale: float
    total: float
    status: str


def timed_generation(client: Client, prompt: str, images: int, seed: int) -> Timed:
    """Submit one generation and watch its streamed updates (status is the first output)."""
    started = time.perf_counter()
    job = client.submit(*request_args(prompt, images, seed), api_name="/generate")
    first = None
    while not job.done():
        if first is None and any(str(output[0]).startswith("scale 1/") for output in job.outputs()):
            first = time.perf_counter() - started
        time.sleep(0.005)
    status = str(job.result()[0]).replace("\\", "")  # the page's Markdown escapes ('1\\.88 s')
    total = time.perf_counter() - started
    if first is None and any(str(output[0]).startswith("scale 1/") for output in job.outputs()):
        first = total  # the first scale arrived in the last poll interval
    return Timed(first if first is not None else float("nan"), total, status)


def seconds_in(status: str, pattern: str) -> float:
    match = re.search(pattern, status)
    return float(match.group(1)) if match else float("nan")


def main(args: BenchArgs) -> None:
    log = Path(tempfile.mkdtemp(prefix="nextscale-bench-ui-")) / "server.log"
    process, url, page, loaded = start_server(args, log)
    print(f"server: page served after {page:.1f} s, model loaded after {loaded:.1f} s (log: {log})")
    try:
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        for seed in range(2):  # warm-up: first-call allocations, caches
            timed_generation(client, PROMPTS[0], args.images, seed)

        import torch

        from nextscale.sampling import SamplingConfig, generate, load_pipeline

        if args.threads:
            torch.set_num_threads(args.threads)
        pipeline = load_pipeline(None)
        runs, direct = [], []
        for index in range(args.latency_runs + 1):  # the first direct call warms up
            prompt, seed = PROMPTS[index % len(PROMPTS)], 100 + index
            begun = time.perf_counter()
            generate(pipeline, [prompt] * args.images, seed, SamplingConfig(), return_progression=True)
            if index:
                direct.append(time.perf_counter() - begun)
                runs.append(timed_generation(client, prompt, args.images, seed))
        del pipeline
        bad = [run.status for run in runs if not run.status.startswith(f"{args.images} images in")]
        assert not bad, bad
        print(f"\n{args.images} images with the progression streamed after every scale "
              f"(median of {args.latency_runs}, client side):")
        print(f"  first scale in the client: {statistics.median(run.first_scale for run in runs) * 1000:.0f} ms")
        print(f"  final images in the client: {statistics.median(run.total for run in runs) * 1000:.0f} ms")
        sampling = statistics.median(seconds_in(run.status, r"in ([\d.]+) s on") for run in runs)
        print(f"  sampling time reported by the server: {sampling * 1000:.0f} ms")
        baseline = statistics.median(direct)
        print(f"  generate() with progression in this process: {baseline * 1000:.0f} ms; the UI's final images "
              f"take {statistics.median(run.total for run in runs) / baseline:.2f}x that")

        before = rss_mb(process.pid)
        peak = [before]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(process.pid))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        results: list[Timed | BaseException] = [RuntimeError("not run")] * args.requests
        barrier = threading.Barrier(args.requests)

        def send(index: int) -> None:
            barrier.wait()
            try:
                results[index] = timed_generation(client, PROMPTS[index % len(PROMPTS)], args.images, 1000 + index)
            except BaseException as error:  # counted below
                results[index] = error

        threads = [threading.Thread(target=send, args=(index,)) for index in range(args.requests)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(1.0, args.timeout - (time.perf_counter() - started)))
        wall = time.perf_counter() - started
        done.set()
        watcher.join()
        time.sleep(2.0)  # let the server settle (its queue threads, the cache of served files)
        after = rss_mb(process.pid)

        errors = [result for result in results if isinstance(result, BaseException)]
        finished = [result for result in results if isinstance(result, Timed)]
        refused = [run.status for run in finished if not run.status.startswith(f"{args.images} images in")]
        waits = sorted(seconds_in(run.status, r"waited ([\d.]+) s") for run in finished)
        sampling_times = [seconds_in(run.status, r"in ([\d.]+) s on") for run in finished]
        print(f"\n{args.requests} concurrent requests of {args.images} images (server --concurrency "
              f"{args.concurrency}):")
        print(f"  completed: {len(finished) - len(refused)}/{args.requests}; errors: {len(errors) + len(refused)}"
              + (f" {[str(error) for error in errors][:3]} {refused[:3]}" if errors or refused else ""))
        print(f"  wall: {wall:.2f} s; sum of the sampling times: {sum(sampling_times):.2f} s (one at a time: the "
              "wall is at least their sum)")
        print(f"  waits in the queue reported by the server: min {waits[0]:.2f} s, median "
              f"{statistics.median(waits):.2f} s, max {waits[-1]:.2f} s")
        print(f"  client latency: median {statistics.median(run.total for run in finished):.2f} s, max "
              f"{max(run.total for run in finished):.2f} s")
        growth = (after - before) / before * 100
        print(f"  server memory (RSS): {before:.0f} MB before, {peak[0]:.0f} MB peak, {after:.0f} MB after "
              f"({growth:+.1f}%; target < 10%)")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    main(tyro.cli(BenchArgs))
