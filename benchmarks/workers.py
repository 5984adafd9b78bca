"""The parent side of the worker protocol: one benchmark configuration per process.

A `Worker` runs `bench_worker.py '<json config>'` (its own Keras backend, its own peak
memory) and talks to it over a pipe: one JSON request per line on its stdin, one
`PREFIX`-marked JSON reply per request on its stdout. So a script can interleave
configurations (A, B, A, B, ...) and every one of them sees the same machine load.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "bench_worker.py")
PREFIX = "@@bench "


class WorkerError(RuntimeError):
    pass


class Worker:
    """A configuration in its own process; `call(cmd, **args)` returns the worker's reply."""

    def __init__(self, name, config, backend="jax", env=None):
        self.name, self.config, self.backend = name, config, backend
        self.info, self.error = None, None
        self._stderr = tempfile.TemporaryFile(mode="w+")
        full_env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                        PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env=full_env, cwd=os.path.dirname(HERE),
        )

    def stderr_tail(self, chars=3000):
        self._stderr.seek(0)
        return self._stderr.read()[-chars:]

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                msg = json.loads(line[len(PREFIX):])
                if "error" in msg:
                    raise WorkerError(f"{self.name}: {msg['error']}")
                return msg
        rc = self.proc.wait()
        raise WorkerError(f"{self.name} exited with code {rc}:\n{self.stderr_tail()}")

    def ready(self):
        try:
            self.info = self._read()
        except WorkerError as e:
            self.error = str(e)
            self.close()
        return self.info

    def call(self, cmd, **args):
        if self.error:
            return None
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
            return self._read()
        except (WorkerError, BrokenPipeError, OSError) as e:
            self.error = str(e)
            self.close()
            return None

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def start_workers(specs, jobs=2):
    """Starts `Worker(*spec)` for each spec, at most `jobs` setting up at a time.

    Set-up (imports, building, compilation, warm-up) runs concurrently; timed work later runs
    one worker at a time. A worker that fails keeps `.error` and is skipped afterwards.
    """
    workers = []
    for begin in range(0, len(specs), max(1, jobs)):
        chunk = [Worker(*spec) for spec in specs[begin:begin + max(1, jobs)]]
        for w in chunk:
            t = time.perf_counter()
            w.ready()
            status = "failed: " + w.error.splitlines()[0][:200] if w.error else "ready"
            print(f"  [{w.name}] {status} ({time.perf_counter() - t:.0f} s wait)", flush=True)
        workers.extend(chunk)
    return workers


def interleave(workers, repeats, *calls):
    """Runs `calls` ((cmd, args) pairs) on every worker in turn, `repeats` rounds (A, B, A, B).

    Returns {worker name: {cmd: [reply, ...]}}.
    """
    out = {w.name: {cmd: [] for cmd, _ in calls} for w in workers}
    for _ in range(repeats):
        for w in workers:
            for cmd, args in calls:
                reply = w.call(cmd, **args)
                if reply is not None:
                    out[w.name][cmd].append(reply)
    return out


def finish_all(workers):
    out = {}
    for w in workers:
        out[w.name] = w.call("finish") or {}
        w.close()
    return out
