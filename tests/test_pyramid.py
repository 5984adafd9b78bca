import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from keras_hpdm import PyramidSpec


def random_video(spec, channels=3, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, spec.target_size + (channels,)).astype(dtype)


def independent_level(video, spec, level, offset):
    """Crop-then-average with explicit loops: an independent reference for `extract`."""
    k = spec.level_factor(level)
    r = spec.patch_size
    out = np.zeros(r + (video.shape[-1],))
    for i in range(r[0]):
        for j in range(r[1]):
            for m in range(r[2]):
                f0 = (offset[0] + i) * k[0]
                h0 = (offset[1] + j) * k[1]
                w0 = (offset[2] + m) * k[2]
                block = video[f0 : f0 + k[0], h0 : h0 + k[1], w0 : w0 + k[2]]
                out[i, j, m] = block.reshape(-1, video.shape[-1]).mean(0)
    return out


def test_sizes_scales_factors():
    spec = PyramidSpec((4, 8, 16), 3)
    assert spec.target_size == (16, 32, 64)
    assert [spec.level_size(lv) for lv in range(3)] == [(4, 8, 16), (8, 16, 32), (16, 32, 64)]
    assert spec.level_scale(2) == (0.25, 0.25, 0.25)
    assert spec.level_factor(0) == (4, 4, 4)
    assert spec.level_factor(2) == (1, 1, 1)
    flat = PyramidSpec((4, 8, 16), 3, pyramid_time=False)
    assert flat.target_size == (4, 32, 64)
    assert flat.level_scale(1) == (1.0, 0.5, 0.5)
    assert flat.level_factor(0) == (1, 4, 4)


def test_containment_alignment_and_coords():
    spec = PyramidSpec((2, 4, 6), 4)
    r = np.array(spec.patch_size)
    for seed in range(50):
        offsets = spec.sample_offsets(seed)
        assert offsets.dtype.kind == "i"
        assert np.all(offsets[0] == 0)
        coords = spec.coords_from_offsets(offsets)
        for lv in range(1, spec.num_levels):
            assert np.all(offsets[lv] >= 2 * offsets[lv - 1])
            assert np.all(offsets[lv] + r <= 2 * (offsets[lv - 1] + r))
            # In fractions: the box lies inside the parent box.
            s, d = coords[lv, :3], coords[lv, 3:]
            ps, pd = coords[lv - 1, :3], coords[lv - 1, 3:]
            assert np.all(d >= pd - 1e-7) and np.all(d + s <= pd + ps + 1e-7)
        # Coordinates are consistent with offsets and canvas sizes.
        for lv in range(spec.num_levels):
            canvas = np.array(spec.level_size(lv))
            np.testing.assert_allclose(coords[lv, 3:], offsets[lv] / canvas, rtol=1e-6)
            np.testing.assert_allclose(coords[lv, :3], r / canvas, rtol=1e-6)
            # Integer alignment: the box maps to whole pixels at full resolution.
            full = coords[lv, 3:] * np.array(spec.target_size)
            np.testing.assert_allclose(full, np.round(full), atol=1e-4)


def test_extract_matches_independent_crop_then_average():
    spec = PyramidSpec((2, 3, 4), 3)
    video = random_video(spec, seed=1)
    offsets = spec.sample_offsets(7)
    patches = spec.extract(video, offsets)
    assert patches.shape == (3, 2, 3, 4, 3) and patches.dtype == np.float32
    for lv in range(3):
        np.testing.assert_allclose(
            patches[lv], independent_level(video, spec, lv, offsets[lv]), rtol=1e-6
        )
    # Level 0 is the whole video downsampled; the finest level is a plain pixel crop.
    np.testing.assert_allclose(
        patches[0], video.reshape(2, 4, 3, 4, 4, 4, 3).mean((1, 3, 5)), rtol=1e-6
    )
    o = offsets[-1]
    np.testing.assert_array_equal(patches[-1], video[o[0]:o[0] + 2, o[1]:o[1] + 3, o[2]:o[2] + 4])


def test_sample_is_deterministic_by_seed():
    spec = PyramidSpec((2, 4, 4), 3)
    video = random_video(spec)
    a, b, c = spec.sample(video, seed=3), spec.sample(video, seed=3), spec.sample(video, seed=4)
    np.testing.assert_array_equal(a["patches"], b["patches"])
    np.testing.assert_array_equal(a["coords"], b["coords"])
    assert not all(np.array_equal(spec.sample(video, s)["offsets"], c["offsets"])
                   for s in range(5))


def top_down_offsets(spec, u):
    """The old scheme, as a reference the coverage test must reject: each level uniform
    inside its parent (`o_l = 2 o_(l-1) + U{0..r}`)."""
    r = np.asarray(spec.patch_size)
    offsets = np.zeros(u.shape, np.int64)
    for level in range(1, spec.num_levels):
        step = np.minimum(np.floor(u[:, level] * (r + 1)).astype(np.int64), r)
        offsets[:, level] = np.where(spec.pyramided, 2 * offsets[:, level - 1] + step, 0)
    return offsets


def border_ratios(spec, offsets):
    """Per level > 0 and pyramided axis: P(patch touches a border) / what uniform offsets
    give (1 / number of valid offsets, per border), the worse of the two borders."""
    ratios = {}
    for level in range(1, spec.num_levels):
        for axis in range(3):
            top = spec.max_offset(level)[axis]
            if not spec.pyramided[axis] or top == 0:
                continue
            uniform = 1.0 / (top + 1)
            low = np.mean(offsets[:, level, axis] == 0)
            high = np.mean(offsets[:, level, axis] == top)
            ratios[(level, axis)] = min(low, high) / uniform
    return ratios


@pytest.mark.parametrize("patch_size, levels", [((16, 64, 64), 3), ((2, 4, 8), 4)])
def test_patches_cover_borders_and_end_frames(patch_size, levels):
    """Every level's patches reach its canvas borders (first/last frames included) at least
    2/3 as often as uniform offsets would; the old top-down draw fails by 10x or more at
    the paper's geometry (r=64, 3 levels)."""
    spec = PyramidSpec(patch_size, levels)
    u = np.random.default_rng(0).random((60_000, levels, 3))
    offsets = spec.offsets_from_uniform(u)
    for o in offsets[:200]:
        spec.check_offsets(o)
    for key, ratio in border_ratios(spec, offsets).items():
        assert ratio >= 2 / 3, (key, ratio)
    old = border_ratios(spec, top_down_offsets(spec, u))
    if patch_size == (16, 64, 64):
        assert old[(2, 1)] < 0.1 and old[(2, 2)] < 0.1, old
    # The finest level is uniform over its whole canvas.
    for axis in (1, 2):
        counts = np.bincount(offsets[:, -1, axis], minlength=spec.max_offset(levels - 1)[axis] + 1)
        assert stats.chisquare(counts).pvalue > 1e-3


def test_batched_offsets_match_single_draws():
    spec = PyramidSpec((2, 3, 5), 3)
    u = np.random.default_rng(1).random((50, 3, 3))
    batched = spec.offsets_from_uniform(u)
    for i in range(50):
        np.testing.assert_array_equal(batched[i], spec.offsets_from_uniform(u[i]))
    # Deterministic by seed, and a seed draws from the same scheme.
    np.testing.assert_array_equal(spec.sample_offsets(3), spec.sample_offsets(3))
    np.testing.assert_array_equal(
        spec.sample_offsets(3),
        spec.offsets_from_uniform(np.random.default_rng(3).random((3, 3))))
    with pytest.raises(ValueError, match="`u` must have shape"):
        spec.offsets_from_uniform(np.zeros((2, 3)))


def test_unpyramided_time_keeps_all_frames():
    spec = PyramidSpec((4, 4, 4), 3, pyramid_time=False)
    video = random_video(spec)
    out = spec.sample(video, seed=0)
    assert np.all(out["offsets"][:, 0] == 0)
    np.testing.assert_allclose(out["coords"][:, 0], 1.0)
    # Level 0 averages space only: frames are untouched.
    np.testing.assert_allclose(
        out["patches"][0], video.reshape(4, 4, 4, 4, 4, 3).mean((2, 4)), rtol=1e-6
    )


def test_tf_twin_matches_numpy():
    spec = PyramidSpec((2, 4, 8), 3)
    video = random_video(spec, seed=2)
    for seed in range(4):
        offsets = spec.sample_offsets(seed)
        np_patches = spec.extract(video, offsets)
        tf_patches = spec.tf_extract(tf.constant(video), tf.constant(offsets)).numpy()
        np.testing.assert_array_equal(tf_patches, np_patches)  # exact for uint8 input
        np.testing.assert_allclose(
            spec.tf_coords_from_offsets(tf.constant(offsets)).numpy(),
            spec.coords_from_offsets(offsets),
        )
    # The TF offset draw equals the numpy one for the same uniforms (float32 arithmetic).
    u = np.random.default_rng(0).random((300, 3, 3)).astype(np.float32)
    twin = tf.function(spec.tf_offsets_from_uniform)
    for row in u:
        np.testing.assert_array_equal(twin(tf.constant(row)).numpy(),
                                      spec.offsets_from_uniform(row))
    # The TF offset sampler respects containment and is deterministic by seed.
    fn = tf.function(lambda s: spec.tf_sample(tf.constant(video), s))
    for seed in range(20):
        out = fn(tf.constant([seed, 1]))
        spec.check_offsets(out["offsets"].numpy())
        np.testing.assert_array_equal(
            out["patches"].numpy(), spec.extract(video, out["offsets"].numpy())
        )
    np.testing.assert_array_equal(
        fn(tf.constant([5, 5]))["offsets"].numpy(), fn(tf.constant([5, 5]))["offsets"].numpy()
    )


@settings(max_examples=25, deadline=None)
@given(
    r=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
    levels=st.integers(1, 3),
    pyramid_time=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_property_random_sizes(r, levels, pyramid_time, seed):
    spec = PyramidSpec(r, levels, pyramid_time=pyramid_time)
    video = random_video(spec, channels=2, seed=seed % 97)
    out = spec.sample(video, seed=seed)
    assert out["patches"].shape == (levels,) + r + (2,)
    spec.check_offsets(out["offsets"])
    for lv in range(levels):
        np.testing.assert_allclose(
            out["patches"][lv], independent_level(video, spec, lv, out["offsets"][lv]),
            rtol=1e-6,
        )
    # Mean is preserved by box filtering on level 0 (the whole video).
    np.testing.assert_allclose(out["patches"][0].mean(), video.mean(), rtol=1e-5)


def test_serialization_round_trip():
    import json

    import keras

    spec = PyramidSpec((2, 4, 8), 3, pyramid_time=False)
    revived = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(spec)))
    )
    assert revived == spec


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"patch_size": (2, 4), "num_levels": 2}, "patch_size"),
        ({"patch_size": (2, 0, 4), "num_levels": 2}, "patch_size"),
        ({"patch_size": (2, -4, 4), "num_levels": 2}, "patch_size"),
        ({"patch_size": (2, 4.5, 4), "num_levels": 2}, "patch_size"),
        ({"patch_size": "244", "num_levels": 2}, "patch_size"),
        ({"patch_size": (2, 4, 4), "num_levels": 0}, "num_levels"),
        ({"patch_size": (2, 4, 4), "num_levels": -1}, "num_levels"),
        ({"patch_size": (2, 4, 4), "num_levels": 2.0}, "num_levels"),
        ({"patch_size": (2, 4, 4), "num_levels": 2, "pyramid_time": "yes"}, "pyramid_time"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PyramidSpec(**kwargs)


def test_bad_inputs():
    spec = PyramidSpec((2, 4, 4), 3)
    video = random_video(spec)
    with pytest.raises(ValueError, match="rank 4"):
        spec.sample(video[0], seed=0)
    with pytest.raises(ValueError, match="target_size"):
        spec.sample(video[:, :8], seed=0)  # smaller
    with pytest.raises(ValueError, match="target_size"):
        spec.sample(np.zeros((8, 12, 16, 3)), seed=0)  # not r * 2**(L-1)
    for bad_seed in (1.5, "0", -1, True):
        with pytest.raises(ValueError, match="seed"):
            spec.sample(video, seed=bad_seed)
    with pytest.raises(ValueError, match="offsets"):
        spec.extract(video, np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="inside"):
        spec.extract(video, np.array([[0, 0, 0], [2, 4, 4], [0, 0, 0]]))
    with pytest.raises(ValueError, match="level"):
        spec.level_size(3)


def test_size_limits():
    """A pyramid too deep for any machine fails at construction, naming the limit (issue 14):
    `PyramidSpec((2, 8, 8), 200)` used to be accepted (target sizes ~1e60), and 9 levels of
    (4, 16, 16) patches ran out of memory only after 50 s."""
    from keras_hpdm.pyramid import MAX_TARGET_SIZE, MAX_TARGET_VOXELS

    with pytest.raises(ValueError, match=f"`num_levels`=200 is too deep.*{MAX_TARGET_SIZE}"):
        PyramidSpec((2, 8, 8), 200)
    with pytest.raises(ValueError, match=f"target height would be 32768.*{MAX_TARGET_SIZE}"):
        PyramidSpec((1, 32, 32), 11, pyramid_time=False)
    with pytest.raises(ValueError, match=rf"\(1024, 4096, 4096\).*{MAX_TARGET_VOXELS}"):
        PyramidSpec((4, 16, 16), 9)
    # At the limits, and without time pyramiding, deep spatial pyramids stay allowed.
    assert PyramidSpec((1, 16, 16), 11, pyramid_time=False).target_size == (1, 16384, 16384)
    assert PyramidSpec((4, 16, 16), 9, pyramid_time=False).target_size == (4, 4096, 4096)
    assert PyramidSpec((1, 1, 1), 11).target_size == (1024,) * 3  # exactly 2**30 voxels
