"""Keeps interpreter exit from deadlocking on `tf.py_function` calls of live data sets.

A live iterator whose background threads call into Python hangs `Py_Finalize` in TF 2.21
(they wait for the GIL that finalization holds). The builders wrap every Python call of the
graph in `with CALLS:`; at exit, new calls raise instead, which ends those iterators with an
error, and in-flight ones are given time to finish.
"""

import atexit
import threading
import time


class PythonCalls:
    """Counts the Python calls running inside `tf.data` graphs; refuses new ones at exit."""

    def __init__(self):
        self.stopping = threading.Event()
        self.active = 0  # calls inside Python now
        self.started = 0  # calls ever started (refused ones included)
        self.lock = threading.Lock()
        self.registered = False

    def register(self):
        # Registered after TensorFlow is imported, so it runs before TF's own exit hooks.
        if not self.registered:
            atexit.register(self.stop)
            self.registered = True

    def stop(self, timeout=10.0, quiet=0.3):
        """Refuses new calls, then waits until none is running or arriving for `quiet` s."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        last, calm_since = self.started, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)  # Releases the GIL: queued calls get in, and are refused.
            if self.active or self.started != last:
                last, calm_since = self.started, time.monotonic()
            elif time.monotonic() - calm_since >= quiet:
                return

    def __enter__(self):
        with self.lock:
            self.started += 1
            if self.stopping.is_set():
                raise RuntimeError("keras_hpdm.data: the interpreter is exiting.")
            self.active += 1

    def __exit__(self, *exc):
        with self.lock:
            self.active -= 1


CALLS = PythonCalls()  # one for the process: the exit hook must see every data set's calls
