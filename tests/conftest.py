import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_folder(log_dir):
    """The folder of the run's event files: ``log_dir``, or the one run folder inside it (the
    commands write to ``ADAPTER/tensorboard/<name>`` so that TensorBoard names the run)."""
    log_dir = Path(log_dir)
    if log_dir.is_dir() and not any(log_dir.glob("events.out.tfevents.*")):
        runs = [p for p in log_dir.iterdir() if any(p.glob("events.out.tfevents.*"))]
        if len(runs) == 1:
            return runs[0]
    return log_dir


def read_scalars(log_dir, tag="train/learning_rate"):
    """``[(step, value), ...]`` as TensorBoard's own reader sees them."""
    accumulator = EventAccumulator(str(run_folder(log_dir)), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def run_until(command, marker):
    """Start ``command`` and SIGKILL it as soon as it prints a line starting with ``marker``."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith(marker):
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    process.stdout.close()
    return process.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def served_scalars(
    command, tag="train/learning_rate", want=1, cwd=None, timeout=120, run=".", also=()
):
    """``(tags, rows)`` from a real TensorBoard server started as ``command``.

    ``command`` is the server's command line without ``--host`` and ``--port``
    (a free port on 127.0.0.1 is added); waits until ``run`` serves ``want`` rows
    of ``tag`` (``[wall_time, step, value]`` each). ``also``: more ``/data/...`` paths
    whose JSON is fetched then, into ``served_scalars.also``.
    """
    port = free_port()
    command = [*command, "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"]
    server = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    tags, rows = None, None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                tags = get_json(f"{base}/tags")
                if tag in tags.get(run, {}):
                    rows = get_json(f"{base}/scalars?{query}")
                    if len(rows) >= want:
                        root = f"http://127.0.0.1:{port}"
                        served_scalars.also = [get_json(root + path) for path in also]
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read()
            time.sleep(0.3)
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stderr.close()
    assert rows is not None, f"the server never listed {tag}: {tags}"
    return tags, rows
