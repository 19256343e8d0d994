"""A local OpenAI-compatible server for a model folder: ``transformers serve`` started and stopped by pid.

For examples, benchmarks and tests that need a real server on one machine (``pip install
'pillow-env[serving]'``); in production point ``openai:URL#MODEL`` at vLLM, SGLang or any other server.

    with LocalServer(resolve_model("smollm2-135m-instruct")) as server:
        env = PillowMatchEnv(model=server.spec)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["LocalServer", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``transformers serve FOLDER`` on ``127.0.0.1:port`` (CPU, float32), healthy when the constructor
    returns; :meth:`stop` (or leaving the ``with`` block) signals its pid and waits.

    Args:
        folder: a Hugging Face model folder (``resolve_model`` gives the converted defaults).
        port: ``None`` picks a free one.
        log: where the server's output goes (``None``: discarded).
        threads: ``OMP_NUM_THREADS`` for the server (``None``: the machine's default).
        startup_timeout: seconds to wait for ``/health``.
    """

    def __init__(self, folder: str | Path, port: int | None = None, log: str | Path | None = None,
                 threads: int | None = None, startup_timeout: float = 240.0) -> None:
        exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
        if exe is None:
            raise FileNotFoundError("the transformers CLI is missing: pip install 'pillow-env[serving]'")
        self.folder, self.port = str(folder), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.spec = f"openai:{self.url}#{self.folder}"
        self.chat_spec = f"openai-chat:{self.url}#{self.folder}"  # the same server's /v1/chat/completions
        self.log_path = None if log is None else Path(log)
        self._log = open(self.log_path, "ab") if self.log_path is not None else subprocess.DEVNULL
        env = dict(os.environ)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        self.process = subprocess.Popen([exe, "serve", self.folder, "--host", "127.0.0.1", "--port", str(self.port),
                                         "--device", "cpu", "--dtype", "float32"], stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env)
        self.pid = self.process.pid
        deadline = time.time() + startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                self._close_log()
                raise RuntimeError(f"transformers serve exited with code {self.process.returncode} before it "
                                   f"was healthy (log: {self.log_path or 'not kept'})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        self.stop()
        raise TimeoutError(f"transformers serve not healthy after {startup_timeout:.0f} s "
                           f"(log: {self.log_path or 'not kept'})")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the server's pid (``SIGTERM``, or e.g. ``SIGKILL`` to simulate a crash) and wait for it."""
        if self.process.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not subprocess.DEVNULL and not self._log.closed:
            self._log.close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
