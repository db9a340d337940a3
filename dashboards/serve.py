"""Local browsing: optuna-dashboard on a study storage, TensorBoard on run folders, bound to 127.0.0.1 by default."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"


def _executable(name: str) -> str:
    """The tool installed next to this interpreter (the project's venv), else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ValueError(f"{name} is not installed; install the dashboards extra: pip install -e '.[dashboards]'.")
    return found


def optuna_dashboard_command(storage: str, host: str = DEFAULT_HOST, port: int = 8080) -> list[str]:
    """The optuna-dashboard command line for a journal file or a database URL."""
    cmd = [_executable("optuna-dashboard"), storage, "--host", host, "--port", str(port), "--quiet"]
    if "://" not in storage:
        if not Path(storage).is_file():
            raise ValueError(f"--storage {storage!r} does not exist; pass the study's journal file or a database URL.")
        cmd += ["--storage-class", "JournalFileStorage"]
    return cmd


def tensorboard_command(logdir: str | Path, host: str = DEFAULT_HOST, port: int = 6006) -> list[str]:
    """The TensorBoard command line over a folder of run folders (each run's events are in <run>/tensorboard/)."""
    if not Path(logdir).is_dir():
        raise ValueError(f"--logdir {str(logdir)!r} is not a folder; pass the sweep's folder of trial run folders.")
    return [_executable("tensorboard"), "--logdir", str(logdir), "--host", host, "--port", str(port)]


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> int:
    """Poll `url` until it answers; returns the HTTP status.

    Raises:
        TimeoutError: when nothing answers within `timeout` seconds (or the process died first).
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise TimeoutError(f"the server exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            last = err
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s (last error: {last})")


def serve(cmd: list[str]) -> int:
    """Run a server in the foreground until Ctrl-C or SIGTERM (`kill`, `timeout`). Either way the server goes down
    with this process (a SIGTERM to this one alone no longer leaves it holding the port), one line says so, and
    the status is 130 (Ctrl-C) or 143 (SIGTERM), as shells report them; else the server's own exit code."""
    print("running:", " ".join(cmd), flush=True)
    process = subprocess.Popen(cmd)
    stopped_by = ["Ctrl-C"]

    def stop(signum, frame):
        stopped_by[0] = "SIGTERM"
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread only
    previous = signal.signal(signal.SIGTERM, stop) if main else None
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"stopped {Path(cmd[0]).name} ({stopped_by[0]})", flush=True)
        return 128 + (signal.SIGTERM if stopped_by[0] == "SIGTERM" else signal.SIGINT)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
