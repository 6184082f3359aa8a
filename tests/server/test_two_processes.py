"""Two explorer processes on one data folder lose no annotation: each save is a read-modify-write
under a lock file that both processes take (threads alone used to lose about 1 save in 5)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

SRC = Path(__file__).resolve().parents[2] / "src"
URL = re.compile(r"at (http://127\.0\.0\.1:\d+/)")


def _start_server(data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "circuit_atlas.cli.main", "serve", str(data_dir), "--port", "0",
         "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )


def _wait_for_url(process: subprocess.Popen, timeout: float = 120.0) -> str:
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:
            match = URL.search(line)
            if match and not found:
                found.append(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the explorer process did not start")
        time.sleep(0.05)
    url = found[0]
    while time.monotonic() < deadline:  # printed just before uvicorn accepts connections
        try:
            if httpx.get(f"{url}api/health", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("the explorer process does not answer")


def test_two_servers_on_one_folder_lose_no_annotation(data_dir: Path) -> None:
    processes = [_start_server(data_dir) for _ in range(2)]  # started together: half the wait
    try:
        urls = [f"{_wait_for_url(process)}api/graphs/demo/annotations" for process in processes]
        n_writes = 50
        barrier = threading.Barrier(n_writes)

        def save(i: int) -> int:
            with httpx.Client(timeout=60) as http:
                barrier.wait()
                return http.put(urls[i % 2], json={"node_labels": {f"n{i}": f"label {i}"}}).status_code

        with ThreadPoolExecutor(n_writes) as pool:
            statuses = list(pool.map(save, range(n_writes)))
        assert statuses == [200] * n_writes
        for url in urls:
            final = httpx.get(url).json()
            assert len(final["node_labels"]) == n_writes
            assert final["revision"] == n_writes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
