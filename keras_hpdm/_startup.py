"""What `import keras_hpdm` does before anything else: a quiet TensorFlow start, and the
registration of keras_hpdm's classes once Keras is imported. Imports nothing heavy.

Quiet start (`quiet_start`), before anything imports TensorFlow, JAX or torch:

- Unless the user set it, `TF_CPP_MIN_LOG_LEVEL` (read by TensorFlow, and by XLA in
  jaxlib) becomes 2 (errors only), or 3 on a machine without an NVIDIA driver, where the
  one error TensorFlow logs is its failed CUDA probe (`E0000 ... failed call to cuInit`).
  (`import jax` sets it to 1 if unset: when JAX came first, that 1 is replaced too.)
- TensorFlow writes a few lines while it loads, before it reads that level (absl's
  `WARNING: All log messages before absl::InitializeLog() is called are written to STDERR`
  and `I0000 ... cudart_stub.cc ... Could not find cuda drivers`). So the first
  `import tensorflow` runs with file descriptor 2 captured, and everything it wrote is
  written back except those lines below the level (the user's or ours): at 0 all stay.
"""

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

# absl's pre-initialisation banner, and lines in absl's format:
# "I0000 00:00:1796032037.152305   27373 cudart_stub.cc:31] ...".
_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to"
_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.\-/]+:\d+\] ")
_SEVERITY = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}  # TF_CPP_MIN_LOG_LEVEL hides those below
_NVIDIA = ("/dev/nvidiactl", "/dev/dxg", "/proc/driver/nvidia")


def quiet_start():
    """Sets the log level unless the user did, and filters the first `import tensorflow`
    by it (see the module's doc). Idempotent."""
    if not _user_set_log_level():
        has_gpu_driver = any(os.path.exists(p) for p in _NVIDIA)
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if has_gpu_driver else "3"
        if "jax" in sys.modules:  # jaxlib read the level when it loaded: tell it too
            with contextlib.suppress(Exception):
                from jax._src.lib import utils

                utils.absl_set_min_log_level(int(os.environ["TF_CPP_MIN_LOG_LEVEL"]))
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        return
    if level > 0:
        FirstImport.install("tensorflow", lambda: filtered_stderr(level))


def _user_set_log_level():
    """Whether `TF_CPP_MIN_LOG_LEVEL` is the user's choice. `import jax` sets it to 1 when
    unset (which shows TensorFlow's errors, the failed CUDA probe among them): a 1 with JAX
    loaded is JAX's unless the process started with it."""
    value = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if value is None:
        return False
    if value != "1" or "jax" not in sys.modules:
        return True
    try:
        with open("/proc/self/environ", "rb") as f:
            return b"\0TF_CPP_MIN_LOG_LEVEL=" in b"\0" + f.read()
    except OSError:  # not Linux: cannot tell, so it is the user's
        return True


def register_on_keras_import(load_all, name="keras", package="keras_hpdm"):
    """Runs `load_all()` (which imports keras_hpdm's modules, registering their classes)
    once Keras is imported, so that `import keras_hpdm; import keras;
    keras.saving.load_model(path)` works as when Keras comes first:

    - right after a top-level `import keras`;
    - when Keras was imported inside the import of a `package` submodule (e.g. `from
      keras_hpdm.pyramid import PyramidSpec`), right after that outermost import ends.
      Not in the middle of it: importing keras_hpdm's modules there could go in a circle.
    """
    done = []

    def load_once():
        if not done:
            done.append(True)
            with contextlib.suppress(Exception):  # fails again, with its traceback, on use
                load_all()

    @contextlib.contextmanager
    def then_load_all():
        yield
        if not _initializing(exclude=name):
            load_once()

    FirstImport.install(name, then_load_all)
    if name not in sys.modules:
        sys.meta_path.insert(0, AfterImports(package + ".", name, load_once, done))


def _initializing(exclude=None):
    """Whether some module (other than `exclude`) is being imported right now."""
    return any(getattr(getattr(m, "__spec__", None), "_initializing", False)
               for module_name, m in list(sys.modules.items()) if module_name != exclude)


class AfterImports:
    """A meta path finder that finds nothing itself: after each import of a module whose
    name starts with `prefix`, once no other import is under way and module `needed` is
    loaded, it removes itself and runs `callback()` (until `done` is set)."""

    def __init__(self, prefix, needed, callback, done):
        self.prefix, self.needed, self.callback, self.done = prefix, needed, callback, done
        self._finding = False

    def find_spec(self, name, path=None, target=None):
        if self.done:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            return None
        if not name.startswith(self.prefix) or self._finding:
            return None
        self._finding = True  # the other finders' answer, without asking this one again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_module_then_check(module):
            exec_module(module)
            if self.needed in sys.modules and not self.done and not _initializing(name):
                with contextlib.suppress(ValueError):
                    sys.meta_path.remove(self)
                self.callback()

        spec.loader.exec_module = exec_module_then_check
        return spec

    def invalidate_caches(self):
        pass


def is_noise(line, level):
    """Whether `line` (bytes) is a start-up line that log level `level` hides."""
    if line.startswith(_BANNER):
        return level > 0
    match = _LINE.match(line)
    return bool(match) and _SEVERITY[match.group(1)] < level


class FirstImport:
    """A meta path finder that finds nothing itself: it runs the first import of module
    `name` (wherever it comes from: for TensorFlow Keras' backend, `keras_hpdm.data`,
    keras-hub or user code) inside the context manager `context()`, then removes itself."""

    def __init__(self, name, context):
        self.name = name
        self.context = context

    @classmethod
    def install(cls, name, context):
        """Installs the hook unless `name` is imported already or hooked (idempotent)."""
        if name not in sys.modules and not any(
                isinstance(f, cls) and f.name == name for f in sys.meta_path):
            sys.meta_path.insert(0, cls(name, context))

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the other finders' answer
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_module_in_context(module):
            with self.context():
                exec_module(module)

        spec.loader.exec_module = exec_module_in_context
        return spec

    def invalidate_caches(self):
        pass


@contextlib.contextmanager
def filtered_stderr(level):
    """Captures file descriptor 2 (C++ and Python writes alike) and writes back every line
    but those `is_noise` at `level` when the block ends, even if it raises."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
        yield
        return
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 2)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        kept = [line for line in capture.read().splitlines(keepends=True)
                if not is_noise(line, level)]
        capture.close()
        data = b"".join(kept)
        while data:
            data = data[os.write(2, data):]
