"""Test utilities shared by the library's tests and by users' custom layers."""

from keras_hpdm.testing.multibackend import run_in_backends, run_processes
from keras_hpdm.testing.test_case import TestCase, disable_tf32

__all__ = ["TestCase", "disable_tf32", "run_in_backends", "run_processes"]
