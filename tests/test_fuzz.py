"""Property-based fuzzing of the user-facing entry points (issue 14, item 2): `PyramidSpec`,
the layers that take user shapes and values, `PatchDiffusionModel.generate`, the CLI parser
and the media decoders.

Every call gets random, often hostile, arguments. The only allowed outcomes are a valid
result, or a `ValueError` / `TypeError` (`MediaDecodeError` for media files) whose message
names the bad argument (or file). Anything else (an IndexError, a backend shape error, a
CLI traceback) is a bug: the cases that found one are pinned with `@example`.

Runs are derandomized (every run and CI see the same cases) and bounded by `max_examples`.
Backend-independent tests run in the torch pass only (the shortest).
"""

import contextlib
import datetime
import functools
import io
import math
import numbers
import os
import re
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from keras import ops

import keras_hpdm
from keras_hpdm import PyramidSpec, cli
from keras_hpdm.backbones import RINBackbone
from keras_hpdm.data import (
    MediaDecodeError,
    builtin_clip_path,
    builtin_images,
    decode_video,
    probe_media,
    read_image,
)
from keras_hpdm.data.decode import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from keras_hpdm.diffusion.samplers import SAMPLERS
from keras_hpdm.diffusion.schedules import MAX_NUM_STEPS
from keras_hpdm.layers import CropResample, DeepContextFusion, PatchDetokenizer, PatchTokenizer
from keras_hpdm.pyramid import MAX_TARGET_SIZE, MAX_TARGET_VOXELS
from tests.markers import one_pass_only


def fuzz(max_examples, deadline=None):
    # No deadline by default: first calls compile (JAX, tf.function) and the CI machines are
    # shared. No example database: derandomized runs must not depend on earlier failures.
    return settings(max_examples=max_examples, deadline=deadline, derandomize=True,
                    database=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.filter_too_much])


# Cheap host-side code gets a deadline: a decoder or parser stuck for seconds is a bug too.
HOST_DEADLINE = datetime.timedelta(seconds=10)


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


# Every kind of scalar a caller might pass by mistake: small (<= 0 included) and huge ints,
# NumPy scalars, None, bools, floats (2.0, NaN, inf), text, and a 0-d array.
SCALARS = st.one_of(
    st.integers(-3, 8), st.integers(2**31, 2**80),
    st.builds(np.int64, st.integers(-2, 8)), st.builds(np.uint64, st.integers(2**63, 2**64 - 1)),
    st.none(), st.booleans(), st.just(np.bool_(True)),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([2.0, math.nan, -math.inf]),
    st.text(max_size=2), st.builds(np.array, st.integers(1, 4)),
)


def hostile(valid):
    """`SCALARS` that `valid` rejects: values the library must refuse, naming them."""
    return SCALARS.filter(lambda v: not valid(v))


def sequence(value):
    """The entries of a list, tuple or 1-d array; None for anything else."""
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        return list(value)
    return None


# ------------------------------------------------------------------ PyramidSpec
def spec_error(patch, levels, time):
    """The argument `PyramidSpec(patch, levels, time)` must name (its check order), or None."""
    entries = sequence(patch)
    if entries is None or len(entries) != 3 or not all(is_int(v) and v >= 1 for v in entries):
        return "patch_size"
    if not (is_int(levels) and levels >= 1):
        return "num_levels"
    if not isinstance(time, (bool, np.bool_)):
        return "pyramid_time"
    return None


def target_size(patch, levels, time):
    """`target_size`, or None past the limits (without computing 2**(2**80))."""
    if levels - 1 > MAX_TARGET_SIZE.bit_length():
        return None
    size = tuple(int(r) * 2 ** (int(levels) - 1) if axis or time else int(r)
                 for axis, r in enumerate(patch))
    if max(size) > MAX_TARGET_SIZE or math.prod(size) > MAX_TARGET_VOXELS:
        return None
    return size


PATCHES = st.one_of(
    st.tuples(st.integers(1, 8), st.integers(1, 64), st.integers(1, 64)),
    st.tuples(SCALARS, SCALARS, SCALARS),
    st.lists(st.integers(0, 8), max_size=5),
    st.builds(np.array, st.lists(st.integers(0, 8), min_size=3, max_size=3)),
    SCALARS,
)


@one_pass_only
@fuzz(150, HOST_DEADLINE)
@given(patch=PATCHES, levels=st.one_of(st.integers(1, 16), SCALARS),
       time=st.one_of(st.booleans(), SCALARS), level=st.one_of(st.integers(-1, 4), SCALARS),
       seed=st.one_of(st.integers(0, 2**70), SCALARS))
# Found by this test: a 0-d array raised a bare "len() of unsized object" TypeError.
@example(patch=np.array(2), levels=2, time=True, level=0, seed=0)
def test_pyramid_spec(patch, levels, time, level, seed):
    name = spec_error(patch, levels, time)
    if name is not None:
        with pytest.raises(ValueError, match=f"`{name}"):
            PyramidSpec(patch, levels, time)
        return
    target = target_size(patch, levels, time)
    if target is None:
        with pytest.raises(ValueError, match="MAX_TARGET_(SIZE|VOXELS)"):
            PyramidSpec(patch, levels, time)
        return
    spec = PyramidSpec(patch, levels, time)
    assert spec.target_size == target and spec.num_levels == levels
    assert PyramidSpec.from_config(spec.get_config()) == spec
    if is_int(level) and 0 <= level < levels:
        assert spec.level_size(level)[1] == int(patch[1]) * 2**level
    else:
        with pytest.raises(ValueError, match="`level`"):
            spec.level_size(level)
    if seed is None or (is_int(seed) and seed >= 0):
        spec.check_offsets(spec.sample_offsets(seed))
    else:
        with pytest.raises(ValueError, match="`seed`"):
            spec.sample_offsets(seed)


# ----------------------------------------------------------------------- layers
# One fault per example (or none), so that every check is reached and the oracle knows the
# message to expect. Valid shapes and dtypes come from small sets: each new one compiles the
# layer's ops again (JAX, TF), which would cost seconds per example.
DTYPES = st.sampled_from(["float32", "uint8", "bool"])
RANK_CHANGES = st.sampled_from([lambda x: x[0], lambda x: x[None], lambda x: x.reshape(-1)])


def as_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def random_array(shape, dtype, seed=0):
    return np.random.default_rng(seed).uniform(0, 2, shape).astype(dtype)


def boxes_valid(b):
    b = b.astype(np.float64)
    start, extent = b[:, :3], b[:, 3:]
    return bool(np.isfinite(b).all() and (extent > 0).all() and (start >= -1e-6).all()
                and (start + extent <= 1 + 1e-6).all())


@st.composite
def valid_boxes(draw, batch):
    extent = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3)))
    start = (1 - extent) * np.array(draw(st.lists(st.floats(0, 1), min_size=3, max_size=3)))
    return np.tile(np.concatenate([start, extent]), (batch, 1)).astype("float32")


CROP_FAULTS = ["none", "none", "none", "output_size", "features_rank", "features_empty",
               "boxes_rank", "boxes_width", "boxes_batch", "boxes_values", "boxes_dtype"]


@fuzz(20)
@given(fault=st.sampled_from(CROP_FAULTS), output_size=st.sampled_from([(1, 2, 3)]),
       shape=st.sampled_from([(2, 2, 4, 4, 3)]), dtype=DTYPES, data=st.data())
# Found by this test: string boxes raised numpy's unnamed "could not convert string to
# float"; zero frames/height/width resampled silently to zeros; integer features came out
# as zeros (interpolation weights cast to int) and bool ones failed in TF/torch kernels.
@example(fault="boxes_dtype", output_size=(2, 2, 2), shape=(2, 2, 4, 4, 3), dtype="float32",
         data="str")
@example(fault="features_empty", output_size=(2, 2, 2), shape=(2, 0, 4, 4, 3),
         dtype="float32", data=None)
@example(fault="none", output_size=(1, 2, 3), shape=(2, 2, 4, 4, 3), dtype="uint8", data=None)
@example(fault="none", output_size=(1, 2, 3), shape=(2, 2, 4, 4, 3), dtype="bool", data=None)
def test_crop_resample(fault, output_size, shape, dtype, data):
    def draw(strategy, pinned):
        return data.draw(strategy) if isinstance(data, st.DataObject) else pinned

    if fault == "output_size":
        bad = draw(st.one_of(SCALARS, st.tuples(SCALARS, st.just(2), st.just(2)),
                             st.lists(st.integers(1, 3), max_size=4).filter(
                                 lambda v: len(v) != 3)), None)
        with pytest.raises(ValueError, match="`output_size"):
            CropResample(bad)
        return
    if fault == "features_empty" and isinstance(data, st.DataObject):
        axis = data.draw(st.integers(1, 3))
        shape = shape[:axis] + (0,) + shape[axis + 1:]
    features = random_array(shape, dtype)
    b = draw(valid_boxes(shape[0]), np.tile([0, 0, 0, 1, 1, 1], (shape[0], 1)).astype("f4"))
    match = {"features_rank": "`features` must have rank 5", "features_empty": "`features`",
             "boxes_rank": "`boxes` must have shape", "boxes_width": "`boxes` must have shape",
             "boxes_batch": "same batch size", "boxes_values": "`boxes`",
             "boxes_dtype": "`boxes`"}.get(fault)
    if fault == "features_rank":
        features = draw(RANK_CHANGES, None)(features)
    elif fault == "boxes_rank":
        b = draw(RANK_CHANGES, None)(b)
    elif fault == "boxes_width":
        b = b[:, :draw(st.sampled_from([0, 3, 5]), 5)]
    elif fault == "boxes_batch":
        b = np.concatenate([b, b])[:shape[0] + draw(st.sampled_from([-1, 1]), 1)]
    elif fault == "boxes_values":
        row = draw(st.lists(st.floats(width=32), min_size=6, max_size=6), None)
        b = np.tile(np.array(row, "float32"), (shape[0], 1))
        if boxes_valid(b):
            match = None
    elif fault == "boxes_dtype":
        b = b.astype(draw(st.sampled_from(["str", "object", "complex64"]), "str"))
    layer = CropResample(output_size)
    if match is not None:
        with pytest.raises(ValueError, match=match):
            layer(features, b)
        return
    out = as_numpy(layer(features, b))
    assert out.shape == (shape[0],) + output_size + (shape[-1],)
    # Linear interpolation is a convex combination: values stay within the input's range,
    # and a constant input comes out unchanged.
    values = features.astype(np.float32)
    assert values.min() - 1e-2 <= out.min() and out.max() <= values.max() + 1e-2
    np.testing.assert_allclose(as_numpy(layer(np.ones_like(features), b)), 1, rtol=1e-3)


TOKENIZER_FAULTS = ["none", "none", "none", "patch_size", "dim", "rank", "channels",
                    "indivisible", "empty", "other_size", "detokenizer_rank",
                    "detokenizer_channels"]


@fuzz(15)
@given(fault=st.sampled_from(TOKENIZER_FAULTS), patch=st.just((1, 2, 2)),
       dim=st.just(4), shape=st.just((2, 2, 4, 4, 3)),
       dtype=st.sampled_from(["float32", "uint8"]), data=st.data())
# Found by this test: a zero-size axis or zero channels raised ZeroDivisionError; a built
# tokenizer called on another frame size returned a wrong batch size (its reshape into -1);
# a rank-4 input to the detokenizer failed in a backend reshape.
@example(fault="empty", patch=(1, 2, 2), dim=4, shape=(2, 0, 4, 4, 3), dtype="float32",
         data=None)
@example(fault="channels", patch=(1, 2, 2), dim=4, shape=(2, 2, 4, 4, 0), dtype="float32",
         data=None)
@example(fault="other_size", patch=(1, 2, 2), dim=4, shape=(2, 2, 4, 4, 3), dtype="float32",
         data=(2, 4, 4, 4, 3))
@example(fault="detokenizer_rank", patch=(1, 2, 2), dim=4, shape=(2, 2, 4, 4, 3),
         dtype="float32", data=None)
def test_patch_tokenizer(fault, patch, dim, shape, dtype, data):
    def draw(strategy, pinned):
        return data.draw(strategy) if isinstance(data, st.DataObject) else pinned

    if fault in ("patch_size", "dim"):
        bad = draw(st.one_of(SCALARS.filter(lambda v: not (is_int(v) and v >= 1)),
                             st.tuples(st.just(1), SCALARS, st.just(1)).filter(
                                 lambda p: not all(is_int(v) and v >= 1 for v in p))), None)
        with pytest.raises(ValueError, match=f"`{fault}"):
            PatchTokenizer(bad, dim) if fault == "patch_size" else PatchTokenizer(patch, bad)
        return
    if fault == "indivisible":  # a multiple of the patch plus 1..p-1, or 0
        axis = draw(st.sampled_from([i for i in range(3) if patch[i] > 1]), 1)
        shape = shape[:axis + 1] + (shape[axis + 1] + 1,) + shape[axis + 2:]
    elif fault == "empty":
        axis = draw(st.integers(1, 3), 1)
        shape = shape[:axis] + (0,) + shape[axis + 1:]
    elif fault == "channels":
        shape = shape[:4] + (0,)
    x = random_array(shape, dtype)
    if fault == "rank":
        x = draw(RANK_CHANGES, None)(x)
    tokenizer = PatchTokenizer(patch, dim)
    match = {"rank": "Input must have rank 5", "channels": "Input must have rank 5.* C > 0",
             "indivisible": "Input .* must be divisible", "empty": "Input .* non-zero"}
    if fault in match:
        with pytest.raises(ValueError, match=match[fault]):
            tokenizer(x)
        return
    tokens = tokenizer(x)
    grid = tuple(n // p for n, p in zip(shape[1:4], patch, strict=True))
    assert tuple(tokens.shape) == (shape[0],) + grid + (dim,)
    if fault == "other_size":  # the learned positions fix the input size
        other = draw(st.sampled_from([(2, 2, 8, 4, 3), (2, 4, 4, 4, 3), (2, 2, 4, 4, 1)]),
                     data)
        with pytest.raises(ValueError, match="Input must have shape .* built for"):
            tokenizer(random_array(other, "float32"))
        return
    channels = 3
    if fault == "detokenizer_channels":
        channels = draw(hostile(lambda v: is_int(v) and v >= 1), None)
        with pytest.raises(ValueError, match="`channels`"):
            PatchDetokenizer(patch, channels)
        return
    if fault == "detokenizer_rank":
        with pytest.raises(ValueError, match="`tokens` must have rank 5"):
            PatchDetokenizer(patch, channels)(as_numpy(tokens)[:, 0])
        return
    video = PatchDetokenizer(patch, channels)(tokens)
    assert tuple(video.shape) == tuple(shape[:4]) + (channels,)


FUSION_FAULTS = ["none", "none", "none", "features_rank", "coords_shape", "batch", "levels",
                 "no_levels", "context", "other_grid"]


@fuzz(15)
@given(fault=st.sampled_from(FUSION_FAULTS), batch=st.just(2), levels=st.integers(1, 3),
       grid=st.just((1, 2, 2)), dim=st.just(2), data=st.data())
# Found by this test: `num_context_levels` out of range or a float, or zero levels, raised
# backend errors ("Need at least one array to stack"); mismatched batch sizes a CropResample
# message about `boxes`; another grid on a built layer an unnamed backend shape error.
@example(fault="context", batch=2, levels=2, grid=(1, 2, 2), dim=2, data=2)
@example(fault="context", batch=2, levels=2, grid=(1, 2, 2), dim=2, data=1.0)
@example(fault="no_levels", batch=2, levels=2, grid=(1, 2, 2), dim=2, data=None)
@example(fault="batch", batch=2, levels=2, grid=(1, 2, 2), dim=2, data=1)
@example(fault="other_grid", batch=2, levels=2, grid=(1, 2, 2), dim=2, data=(1, 2, 4))
def test_deep_context_fusion(fault, batch, levels, grid, dim, data):
    def draw(strategy, pinned):
        return data.draw(strategy) if isinstance(data, st.DataObject) else pinned

    n_levels = 0 if fault == "no_levels" else levels
    rng = np.random.default_rng(0)
    features = rng.normal(size=(batch, n_levels) + grid + (dim,)).astype("float32")
    spec = PyramidSpec((1, 2, 2), 4)
    coords = np.stack([spec.coords_from_offsets(spec.sample_offsets(i))[:n_levels]
                       for i in range(batch)])
    context = 0
    if fault == "features_rank":
        features = features.reshape((-1,) + features.shape[2:])
    elif fault == "coords_shape":
        coords = draw(st.sampled_from([coords[0], coords[..., :3], coords[None]]), coords[0])
    elif fault == "batch":
        coords = np.concatenate([coords, coords])[:batch + draw(st.sampled_from([-1, 1]), 1)]
    elif fault == "levels":
        n = levels + draw(st.sampled_from([-1, 1]), 1)
        coords = np.stack([spec.coords_from_offsets(spec.sample_offsets(i))[:n]
                           for i in range(batch)])
    elif fault == "context":
        context = draw(hostile(lambda v: is_int(v) and 0 <= v < levels), data)
    elif fault == "none":
        context = draw(st.integers(0, levels - 1), 0)
    match = {"features_rank": "`features` must have rank 6", "coords_shape": "`coords`",
             "batch": "batch size .* `coords` has", "levels": "levels .* `coords` has",
             "no_levels": "at least one level",
             "context": "`num_context_levels`"}.get(fault)
    layer = DeepContextFusion()
    if match is not None:
        with pytest.raises(ValueError, match=match):
            layer(features, coords, num_context_levels=context)
        return
    out = as_numpy(layer(features, coords, num_context_levels=context))
    assert out.shape == (batch, levels - context) + grid + (dim,) and np.isfinite(out).all()
    if context == 0:  # a fresh layer is the identity on the features
        np.testing.assert_allclose(out, features, atol=1e-5)
    if fault == "other_grid":  # a built layer: its weights fix (f, h, w, d)
        other = draw(st.sampled_from([(2, 2, 2), (1, 2, 4)]), data)
        with pytest.raises(ValueError, match="`features` must have shape .* built for"):
            layer(rng.normal(size=(batch, levels) + other + (dim,)).astype("f4"), coords)


# --------------------------------------------------------------------- generate
SPEC = PyramidSpec((2, 8, 8), 2)
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def model(single_thread_torch):
    backbone = RINBackbone.from_preset("tiny", pyramid=SPEC, num_classes=NUM_CLASSES)
    return keras_hpdm.PatchDiffusionModel(backbone, seed=0)


def valid_overlap(v):
    entries = [v] * 3 if is_real(v) else sequence(v)
    return entries is not None and len(entries) == 3 and all(
        is_real(e) and 0 <= e < 1 for e in entries)


# Per argument: values `generate` must refuse, and what the message must name. The other
# arguments stay valid (conditions=[0, 1], num_levels=1, ...), so nothing is generated.
BAD_GENERATE = {
    "conditions": (st.one_of(
        st.sampled_from([[], [True], [None], [1, "a"], [[1]], [b"x"], "a prompt", 1.5,
                         [1.0], np.array([[1]]), {1.5: 0}]),
        st.integers(NUM_CLASSES, 2**80).map(lambda c: [c]), st.integers(-2**80, -1),
        st.builds(np.uint64, st.integers(2**63, 2**64 - 1)),
    ), r"`conditions`|Class ids|Prompts given"),
    "num_samples": (st.one_of(
        hostile(lambda v: v is None or (is_int(v) and v == 2)), st.integers(3, 2**40)),
        "`num_samples"),
    "num_steps": (st.one_of(
        hostile(lambda v: v is None or (is_int(v) and 1 <= v <= MAX_NUM_STEPS)),
        st.integers(MAX_NUM_STEPS + 1, 2**80),
        st.lists(st.integers(1, 3), min_size=2, max_size=3),  # one level: one entry
        st.lists(hostile(lambda v: is_int(v) and 1 <= v <= MAX_NUM_STEPS), min_size=1,
                 max_size=1),
    ), "`num_steps"),
    "guidance_scale": (st.one_of(
        hostile(lambda v: is_real(v) and 0 <= v < math.inf),
        st.lists(st.floats(0, 8), min_size=3, max_size=4),  # 1 or 2 levels: not 3 or more
        st.just([]),
        st.lists(hostile(lambda v: is_real(v) and 0 <= v < math.inf), min_size=1, max_size=2),
    ), "`guidance_scale"),
    "context_sigma": (hostile(lambda v: v is None or (is_real(v) and 0 <= v < math.inf)),
                      "`context_sigma`"),
    "overlap": (st.one_of(
        hostile(valid_overlap), st.sampled_from([1.0, -0.5, (0.5, 0.5), (0.5, 1.0, 0.0),
                                                 "abc", (0.5, math.nan, 0.0)])),
        "`overlap"),
    "tile_batch_size": (hostile(lambda v: is_int(v) and v >= 1), "`tile_batch_size`"),
    "seed": (hostile(lambda v: v is None or (is_int(v) and v >= 0)), "`seed`"),
    "num_levels": (hostile(lambda v: v is None or (is_int(v) and 1 <= v <= 2)),
                   "`num_levels`"),
    "sampler": (st.one_of(
        st.sampled_from(["ddim", "", b"euler", ["euler", "heun"], [None], [["euler"]],
                         np.array("euler"), 3, 1.5, ("EULER",)]),
        st.text(max_size=4).filter(lambda t: t not in SAMPLERS)), "`sampler`"),
    "verbose": (st.one_of(
        hostile(lambda v: isinstance(v, (str, numbers.Number)) and v in ("auto", 0, 1, 2)),
        st.sampled_from([3, "yes", [0], np.array([0, 1])])), "`verbose`"),
    "blend": (st.one_of(st.sampled_from(["linear", "", np.array(["a", "b"]), ["uniform"], 1]),
                        st.text(max_size=3)), "`blend`"),
    "callbacks": (st.sampled_from([3, [1], "abc", np.array([1, 2]), [None], print]),
                  "`callbacks`"),
}


@fuzz(120)
@given(name=st.sampled_from(sorted(BAD_GENERATE)), data=st.data())
# Found by this test (each a bare numpy/Python error before): a class id beyond int32
# (OverflowError), a 0-d array overlap or step count, a non-iterable sampler or callbacks,
# an array verbose or blend (ambiguous truth value), 2**70 steps (numpy's "Maximum allowed
# size exceeded").
@example(name="conditions", data=[2**40])
@example(name="overlap", data=np.array(0.5))
@example(name="num_steps", data=np.array(2))
@example(name="num_steps", data=2**70)
@example(name="sampler", data=3)
@example(name="sampler", data=np.array("euler"))
@example(name="callbacks", data=3)
@example(name="callbacks", data=np.array([1, 2]))
@example(name="verbose", data=np.array([0, 1]))
@example(name="blend", data=np.array(["a", "b"]))
def test_generate_rejects_bad_arguments(model, name, data):
    strategy, match = BAD_GENERATE[name]
    value = data.draw(strategy) if isinstance(data, st.DataObject) else data
    kwargs = {"conditions": [0, 1], "num_steps": 1, "num_levels": 1, "verbose": 0, name: value}
    with pytest.raises((ValueError, TypeError), match=match):
        model.generate(**kwargs)


@fuzz(6)
@given(ids=st.lists(st.integers(0, NUM_CLASSES - 1), min_size=1, max_size=2),
       form=st.sampled_from([list, tuple, np.array, "scalar"]),
       repeat=st.booleans(), guidance=st.floats(0, 8), per_level=st.booleans(),
       num_steps=st.sampled_from([1, 2, (1,), [2], np.array([1])]),
       sampler=st.sampled_from([None, *SAMPLERS, ["heun"], ("euler",)]),
       overlap=st.one_of(st.floats(0, 1, exclude_max=True),
                         st.tuples(*[st.floats(0, 0.999)] * 3)),
       tile_batch_size=st.integers(1, 2**70), seed=st.one_of(st.none(), st.integers(0, 2**128)),
       blend=st.sampled_from(["uniform", "smooth"]), flags=st.tuples(*[st.booleans()] * 3))
def test_generate_valid_arguments(model, ids, form, repeat, guidance, per_level, num_steps,
                                  sampler, overlap, tile_batch_size, seed, blend, flags):
    """Any valid request returns uint8 videos of the requested count and size (one level,
    at most 2 network samples per call: each new batch shape compiles the network)."""
    num_samples = 2 if len(ids) == 1 and repeat else None  # one condition, repeated
    if form == "scalar":
        conditions = int(ids[0]) if len(ids) == 1 else ids
    else:
        conditions = form(ids)
    n = num_samples or len(ids)
    guidance = guidance if n == 1 else 1.0  # guidance doubles the network batch
    if per_level:  # one per level: of the one generated, or of the model's two
        guidance = [guidance] if n > 1 or guidance > 4 else [guidance, 2.0]
    calls = []
    cache_context, use_ema, with_callback = flags
    kwargs = dict(num_samples=num_samples, num_steps=num_steps, guidance_scale=guidance,
                  overlap=overlap, tile_batch_size=tile_batch_size, seed=seed, sampler=sampler,
                  blend=blend, cache_context=cache_context, use_ema=use_ema, num_levels=1,
                  verbose=0, callbacks=[calls.append] if with_callback else None)
    video = model.generate(conditions, **kwargs)
    assert video.shape == (n,) + SPEC.level_size(0) + (3,) and video.dtype == np.uint8
    if with_callback:
        assert calls and all(info["level"] == 0 for info in calls)
    if seed is not None:  # reproducible by seed
        np.testing.assert_array_equal(model.generate(conditions, **kwargs), video)


# -------------------------------------------------------------------------- CLI
@functools.cache
def cli_layout():
    """{subcommand: (options, positionals)} of the real parser: options as
    `(option_strings, nargs, choices)`, positionals as names."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    layout = {}
    for name, subparser in sub.choices.items():
        options, positionals = [], []
        for action in subparser._actions:
            if "-h" in action.option_strings:
                continue
            if action.option_strings:
                options.append((action.option_strings, action.nargs, action.choices))
            else:
                positionals.append(action.dest)
        layout[name] = (options, positionals)
    return layout


# No control characters: argparse echoes unrecognized arguments verbatim, so a newline in
# an argument would break any error message in two.
TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=6)
NUMBER_TEXT = st.one_of(
    st.integers(-3, 40).map(str), st.integers(2**62, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "1.5", "-0", "nan", "inf", "1e400", "0x10", "1_000", "٣", "2x",
                     "4x16x16", "x"]),
)


@st.composite
def cli_argv(draw, layout, junk=True):
    """Real subcommands and flags with random values (`junk`: also random positionals and
    unknown subcommands)."""
    command = draw(st.sampled_from(sorted(layout) + (["", "nope"] if junk else [])))
    argv = []
    if draw(st.integers(0, 4)) == 0:
        argv += ["--backend", draw(st.sampled_from(["jax", "tensorflow", "torch", "numpy"]))]
    argv.append(command)
    options, names = layout.get(command, ([], []))
    for _ in names if junk else []:
        if draw(st.integers(0, 5)):
            argv.append(draw(TEXT.filter(lambda t: not t.startswith("-"))))
    for strings, nargs, choices in draw(st.lists(st.sampled_from(options), max_size=4)
                                        if options else st.just([])):
        flag = draw(st.sampled_from(strings))
        if draw(st.integers(0, 9)) == 0:
            flag = flag[:draw(st.integers(3, len(flag)))]  # argparse accepts abbreviations
        argv.append(flag)
        expected = {None: 1, "?": 1, "+": 2, 0: 0}.get(nargs, nargs)
        values = st.sampled_from(sorted(map(str, choices))) if choices else st.one_of(
            NUMBER_TEXT, TEXT)
        argv += [draw(values) for _ in range(max(0, expected + draw(st.integers(-1, 1))))]
    return argv


def run_cli(argv, stub=True):
    """Runs `main(argv)` in-process: returns (exit status, parsed args or None, stderr).
    With `stub`, the commands' `run` only records the parsed arguments."""
    parsed, stderr = [], io.StringIO()
    with contextlib.ExitStack() as stack:
        # `--backend` would re-exec this process under another backend.
        stack.enter_context(mock.patch.object(cli, "set_backend", lambda *_: None))
        if stub:
            for module in cli.SUBCOMMANDS:
                stack.enter_context(mock.patch.object(module, "run", parsed.append))
        stack.enter_context(contextlib.redirect_stderr(stderr))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        try:
            status = cli.main(argv)
            status = 0 if status is None else status
        except SystemExit as e:
            status = e.code
    return status, (parsed[0] if parsed else None), stderr.getvalue()


def check_cli_error(status, stderr, argv, layout):
    """Exit status 2 and one error line (after argparse's usage) that names an argument."""
    assert status == 2, (argv, status, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert errors == lines[-1:], stderr  # exactly one error line, the last one
    assert re.match(r"keras-hpdm( [a-z]+)?: error: \S", errors[0]), errors[0]
    message = errors[0].split(": error: ", 1)[1]
    names = {"COMMAND", *filter(None, argv)}
    for options, positionals in layout.values():
        names |= set(positionals) | {s for strings, _, _ in options for s in strings}
    assert any(name in message for name in names), message


@one_pass_only
@fuzz(100, HOST_DEADLINE)
@given(data=st.data())
def test_cli_parser(data):
    layout = cli_layout()
    argv = data.draw(cli_argv(layout))
    status, args, stderr = run_cli(argv)
    if status == 0:
        assert args is not None and args.command in argv, argv
    else:
        check_cli_error(status, stderr, argv, layout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@one_pass_only
@fuzz(30, HOST_DEADLINE)
@given(command=st.sampled_from(["generate", "evaluate", "export"]),
       checkpoint=st.sampled_from(["missing.keras", "missing_run", "missing/model.keras"]),
       data=st.data())
def test_cli_commands_fail_before_any_work(workdir, command, checkpoint, data):
    """The real commands on a checkpoint that does not exist, with random options: exit 2
    and one error line, before anything is loaded or written."""
    layout = cli_layout()
    argv = data.draw(cli_argv({command: layout[command]}, junk=False))
    argv = argv[:argv.index(command) + 1] + [checkpoint] + argv[argv.index(command) + 1:]
    if command == "export":
        argv.insert(argv.index(checkpoint) + 1, "out.keras")
    with contextlib.chdir(workdir):  # relative paths land in an empty folder
        status, _, stderr = run_cli(argv, stub=False)
        assert os.listdir(".") == [], "a failing command wrote files"
    check_cli_error(status, stderr, argv, layout)


# ------------------------------------------------------------------------ media
@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Real files to damage: the carphone clip as shipped (its index at the end) and
    remuxed with the index in front (truncations then leave decodable frames), and small
    real images."""
    import av

    folder = tmp_path_factory.mktemp("media")
    clip = builtin_clip_path("carphone")
    front = str(folder / "front.mp4")
    with av.open(clip) as src, av.open(front, "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    clips = {name: open(path, "rb").read() for name, path in
             (("shipped", clip), ("front", front))}
    images = {os.path.basename(p): open(p, "rb").read() for p in builtin_images()
              if os.path.basename(p) in ("phantom.png", "chessboard_GRAY.png", "horse.png",
                                          "microaneurysms.png", "rocket.jpg")}
    return folder, clips, images


def check_decoded(path, call):
    """`call()` decodes or raises `MediaDecodeError` naming `path`; returns the result."""
    try:
        return call()
    except MediaDecodeError as e:
        assert str(path) in str(e), e
        return None


def check_frames(video, count=None):
    assert video.dtype == np.uint8 and video.ndim == 4 and video.shape[-1] == 3
    assert min(video.shape[1:3]) >= 1 and (count is None or len(video) == count)


MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP",
         b"\x1aE\xdf\xa3", b"\0\0\0\x18ftypmp42", b"RIFF\0\0\0\0AVI "]


@one_pass_only
@fuzz(40, HOST_DEADLINE)
@given(ext=st.sampled_from(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS),
       magic=st.sampled_from(MAGIC), payload=st.binary(max_size=1024))
def test_random_bytes(media, ext, magic, payload):
    path = media[0] / f"random{ext}"
    path.write_bytes(magic + payload)
    info = check_decoded(path, lambda: probe_media(path))
    if info is not None:
        assert info["num_frames"] >= 1 and min(info["height"], info["width"]) >= 1
    video = check_decoded(path, lambda: decode_video(path, num_frames=2))
    if video is not None:
        check_frames(video, 2)
    if ext in IMAGE_EXTENSIONS:
        image = check_decoded(path, lambda: read_image(path))
        assert image is None or (image.dtype == np.uint8 and image.ndim == 3)


@one_pass_only
@fuzz(30, HOST_DEADLINE)
@given(which=st.sampled_from(["shipped", "front"]), cut=st.floats(0, 1),
       damage=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                       max_size=6),
       start=st.integers(0, 130), num_frames=st.integers(1, 3))
def test_truncated_and_damaged_clip(media, which, cut, damage, start, num_frames):
    data = bytearray(media[1][which][:int(cut * len(media[1][which]))])
    for where, byte in damage:
        if data:
            data[int(where * len(data))] = byte
    path = media[0] / "clip.mp4"
    path.write_bytes(bytes(data))
    info = check_decoded(path, lambda: probe_media(path))
    if info is not None:
        assert info["num_frames"] >= 1 and min(info["height"], info["width"]) >= 1
        if not damage:  # a cut loses frames, never adds or resizes any
            assert info["num_frames"] <= 120 and (info["height"], info["width"]) == (144, 176)
    video = check_decoded(path, lambda: decode_video(path, start=start, num_frames=num_frames))
    if video is not None:
        check_frames(video, num_frames)


@one_pass_only
@fuzz(25, HOST_DEADLINE)
@given(name=st.sampled_from(["phantom.png", "chessboard_GRAY.png", "horse.png",
                             "microaneurysms.png", "rocket.jpg"]),
       cut=st.floats(0, 1), channels=st.sampled_from([1, 3]))
def test_truncated_image(media, name, cut, channels):
    data = media[2][name]
    path = media[0] / f"image{os.path.splitext(name)[1]}"
    path.write_bytes(data[:int(cut * len(data))])
    image = check_decoded(path, lambda: read_image(path, channels=channels))
    if image is not None:
        assert image.dtype == np.uint8 and image.shape[-1] == channels
        assert probe_media(path)["height"] == image.shape[0]


@one_pass_only
@fuzz(40, HOST_DEADLINE)
@given(kind=st.sampled_from(["video", "image"]),
       start=st.one_of(st.integers(0, 3), SCALARS),
       num_frames=st.one_of(st.integers(1, 3), st.none(), SCALARS),
       indices=st.one_of(st.none(), st.lists(st.integers(0, 5), max_size=3),
                         st.lists(SCALARS, min_size=1, max_size=2)),
       channels=st.one_of(st.sampled_from([1, 3]), SCALARS),
       frame_stride=st.one_of(st.integers(1, 3), st.integers(2**62, 2**70),
                              hostile(lambda v: is_int(v) and v >= 1)),
       fps=st.one_of(st.none(), st.floats(1e-300, 1e300),
                     hostile(lambda v: v is None or (is_real(v) and 0 < v < math.inf))))
# Found by this test: `start` or `indices` beyond int64 raised OverflowError and a huge
# `frame_stride` wrapped round to negative frame indices; a float, None or string index, a
# negative or float `num_frames`, `channels=True` (grayscale) or an array passed unnamed or
# silently; a still image ignored every check (and `indices` for its frame count).
@example(kind="video", start=2**70, num_frames=1, indices=None, channels=3, frame_stride=1,
         fps=None)
@example(kind="video", start=0, num_frames=None, indices=[2**70], channels=3, frame_stride=1,
         fps=None)
@example(kind="image", start=0, num_frames=-1, indices=None, channels=3, frame_stride=1,
         fps=None)
@example(kind="video", start=0, num_frames=1.5, indices=None, channels=True, frame_stride=1,
         fps=None)
@example(kind="video", start=0, num_frames=2, indices=None, channels=3, frame_stride=2**70,
         fps=None)
def test_decode_video_arguments(kind, start, num_frames, indices, channels, frame_stride,
                                fps):
    path = (builtin_clip_path("carphone") if kind == "video"
            else next(p for p in builtin_images() if p.endswith("chessboard_GRAY.png")))
    kwargs = dict(start=start, num_frames=num_frames, indices=indices, channels=channels,
                  frame_stride=frame_stride, fps=fps)
    entries = np.asarray(indices if indices is not None else [], dtype=object)
    if not (is_int(channels) and channels in (1, 3)):
        match = "`channels`"
    elif not (is_int(frame_stride) and frame_stride >= 1):
        match = "`frame_stride`"
    elif not (fps is None or (is_real(fps) and 0 < fps < math.inf)):
        match = "`fps`"
    elif not (is_int(start) and 0 <= start <= 2**62):
        match = "`start`"
    elif not (num_frames is None or (is_int(num_frames) and num_frames >= 1)):
        match = "`num_frames`"
    elif not all(is_int(i) and 0 <= i < 2**63 for i in entries.tolist()):
        match = "`indices`"
    else:  # huge strides or tiny fps: frames past the end, a MediaDecodeError
        video = check_decoded(path, lambda: decode_video(path, **kwargs))
        if video is not None:
            count = len(indices) if indices is not None else num_frames
            assert video.dtype == np.uint8 and video.shape[-1] == channels
            assert count is None or len(video) == count
        return
    with pytest.raises(ValueError, match=match):
        decode_video(path, **kwargs)
