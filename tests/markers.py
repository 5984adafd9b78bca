"""Markers the test modules share."""

import keras
import pytest

# For what does not depend on the backend (argument checks, file checks before Keras,
# scripts, examples whose parts other tests run on every backend). Run once, in the torch
# pass: the shortest (scripts/test.sh runs the passes side by side).
one_pass_only = pytest.mark.skipif(keras.config.backend() != "torch",
                                   reason="backend-independent: runs in the torch pass")
