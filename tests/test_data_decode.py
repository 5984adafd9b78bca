"""Decoding, built-in data, Moving MNIST and media discovery (keras_hpdm.data)."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from keras_hpdm import data, package_files
from keras_hpdm.data import decode
from tests.data_helpers import noise_video, smooth_video, write_image, write_video


# ------------------------------------------------------------------------ decode
def test_decode_video_lossless_indices_stride_fps(tmp_path):
    frames = noise_video(12, 16, 24)
    path = write_video(tmp_path / "clip.mkv", frames, fps=30)
    np.testing.assert_array_equal(data.decode_video(path), frames)
    np.testing.assert_array_equal(data.decode_video(path, start=2, num_frames=4, frame_stride=3),
                                  frames[[2, 5, 8, 11]])
    np.testing.assert_array_equal(data.decode_video(path, indices=[7, 1, 1]), frames[[7, 1, 1]])
    np.testing.assert_array_equal(data.decode_video(path, fps=15), frames[::2])
    np.testing.assert_array_equal(data.decode_video(path, fps=20, num_frames=4),
                                  frames[[0, 2, 3, 5]])  # round(i * 1.5)
    gray = data.decode_video(path, indices=[0], channels=1)
    luma = np.floor(frames[0].astype(np.float64) @ [0.299, 0.587, 0.114] + 0.5)
    np.testing.assert_array_equal(gray[0, ..., 0], luma.astype(np.uint8))
    with pytest.raises(data.MediaDecodeError, match="only 12 decodable frames"):
        data.decode_video(path, start=10, num_frames=3)
    with pytest.raises(ValueError, match="frame_stride"):
        data.decode_video(path, frame_stride=0)
    with pytest.raises(ValueError, match="channels"):
        data.decode_video(path, channels=2)


def _block_mean(frames, factor):
    """Area average of `(..., H, W, C)` uint8 frames over `factor x factor` blocks."""
    *lead, h, w, c = frames.shape
    blocks = frames.reshape(*lead, h // factor, factor, w // factor, factor, c)
    return blocks.astype(np.float64).mean(axis=(-4, -2))


def test_cover_size_shrinks_on_decode_by_area_averaging(tmp_path):
    frames = noise_video(6, 32, 48)  # noise: nearest-pixel or no filtering is far off
    path = write_video(tmp_path / "clip.mkv", frames)  # lossless
    small = data.decode_video(path, indices=[4, 1, 4], cover_size=(16, 16))
    assert small.shape == (3, 16, 24, 3)  # decode.resized_cover_shape(32, 48, (16, 16))
    want = _block_mean(frames[[4, 1, 4]], 2)
    error = np.abs(small - want)
    assert error.max() <= 1.0 and error.mean() < 0.5, (error.max(), error.mean())
    assert np.abs(frames[[4, 1, 4], ::2, ::2] - want).mean() > 10  # what a bad filter gives
    gray = data.decode_video(path, indices=[0], cover_size=(16, 16), channels=1)
    assert gray.shape == (1, 16, 24, 1)
    # Frames already small enough are never enlarged; one side may stay at the target.
    np.testing.assert_array_equal(data.decode_video(path, cover_size=(32, 32)), frames)
    assert data.decode_video(path, num_frames=1, cover_size=(8, 24)).shape == (1, 16, 24, 3)
    image = noise_video(1, 32, 48)[0]
    shrunk = data.read_image(write_image(tmp_path / "n.png", image), cover_size=(16, 16))
    assert shrunk.shape == (16, 24, 3)
    assert np.abs(shrunk - _block_mean(image, 2)).max() <= 1.0
    for bad in [(16,), (0, 16), (16.5, 16), "16x16"]:
        with pytest.raises(ValueError, match="cover_size"):
            data.decode_video(path, cover_size=bad)


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".webm", ".gif"])
def test_decode_container_formats(tmp_path, ext):
    frames = smooth_video(10, 32, 48)
    path = write_video(tmp_path / f"clip{ext}", frames, fps=25)
    info = data.probe_media(path)
    assert (info["kind"], info["num_frames"], info["height"], info["width"]) == (
        "video", 10, 32, 48)
    video = data.decode_video(path)
    assert video.shape == (10, 32, 48, 3) and video.dtype == np.uint8
    # Lossy, but the decoded frames are these frames and in this order.
    err = np.abs(video.astype(float) - frames).mean(axis=(1, 2, 3))
    shifted = np.abs(video[1:].astype(float) - frames[:-1]).mean(axis=(1, 2, 3))
    assert err.max() < 10 and (shifted > 2 * err[1:]).all(), (err, shifted)


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".gif"])
def test_seeking_decode_gives_the_same_frames(tmp_path, ext):
    # Keyframes every 8 frames and B-frames: clips past decode.SEEK_MIN_FRAMES are decoded
    # after a seek and must be exactly the frames a decode from the start gives.
    path = write_video(tmp_path / f"long{ext}", smooth_video(90, 16, 24), fps=25, gop=8,
                       b_frames=2)
    full = data.decode_video(path)
    assert len(full) == 90
    for indices in ([50, 51, 52, 53], [60, 70, 80, 89], [48, 49], [88, 89, 89]):
        np.testing.assert_array_equal(data.decode_video(path, indices=indices), full[indices])


def test_read_image_modes(tmp_path):
    rgb = noise_video(1, 9, 7)[0]
    np.testing.assert_array_equal(data.read_image(write_image(tmp_path / "a.png", rgb)), rgb)
    gray = rgb[..., 0]
    out = data.read_image(write_image(tmp_path / "g.png", gray))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))
    assert data.read_image(tmp_path / "g.png", channels=1).shape == (9, 7, 1)
    rgba = np.concatenate([rgb, np.full((9, 7, 1), 10, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.webp", lossless=True)
    np.testing.assert_array_equal(data.read_image(tmp_path / "a.webp"), rgb)
    deep = (np.arange(63, dtype=np.uint16).reshape(9, 7) * 1000)
    Image.fromarray(deep).save(tmp_path / "d.png")
    out = data.read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[..., 0], np.floor(deep / 65535 * 255 + 0.5).astype(np.uint8))
    stills = data.decode_video(tmp_path / "a.png", num_frames=3)
    np.testing.assert_array_equal(stills, np.stack([rgb] * 3))


def test_bad_files_raise_media_decode_error(tmp_path):
    good = write_video(tmp_path / "good.mp4", smooth_video(8, 32, 32))
    raw = open(good, "rb").read()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.webm").write_bytes(np.random.default_rng(0).bytes(5000))
    (tmp_path / "half.mp4").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 100)
    jpeg = tmp_path / "ok.jpg"
    Image.fromarray(smooth_video(1, 64, 64)[0]).save(jpeg)
    (tmp_path / "cut.jpg").write_bytes(jpeg.read_bytes()[:300])
    for name in ["empty.mp4", "junk.webm", "half.mp4", "bad.png", "cut.jpg"]:
        with pytest.raises(data.MediaDecodeError, match=name):
            data.probe_media(tmp_path / name)
    assert data.probe_media(good)["num_frames"] == 8


def test_find_media(tmp_path):
    for rel in ["b/x.MP4", "a/z.png", "a/deep/y.gif", "top.webm", ".hidden.mp4",
                ".git/c.mp4", "notes.txt", "a/w.jpeg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [os.path.relpath(p, tmp_path) for p in data.find_media(tmp_path)]
    assert found == ["a/deep/y.gif", "a/w.jpeg", "a/z.png", "b/x.MP4", "top.webm"]
    assert [os.path.basename(p) for p in data.find_media(tmp_path, recursive=False)] == [
        "top.webm"]
    with pytest.raises(ValueError, match="existing directory"):
        data.find_media(tmp_path / "nope")


# ---------------------------------------------------------------------- builtin
def test_builtin_clips():
    expected = {"bigbuckbunny": (1280, 720, 132), "bikes": (640, 272, 250),
                "carphone": (176, 144, 120)}
    for name, (width, height, count) in expected.items():
        info = data.probe_media(data.builtin_clip_path(name))
        assert (info["width"], info["height"], info["num_frames"]) == (width, height, count)
    clip = data.load_builtin("carphone", start=5, num_frames=3)
    assert clip.shape == (3, 144, 176, 3) and clip.std() > 10
    with pytest.raises(ValueError, match="bikes"):
        data.builtin_clip_path("foreman")


@pytest.mark.skipif(
    importlib.util.find_spec("skimage") is None or importlib.util.find_spec("sklearn") is None,
    reason="scikit-image / scikit-learn data files not installed",
)
def test_builtin_images():
    paths = data.builtin_images()
    names = [os.path.basename(p) for p in paths]
    assert len(paths) == 28 and "astronaut.png" in names and "china.jpg" in names
    images = data.load_builtin("images", packages="sklearn")
    assert sorted(images) == ["china", "flower"]
    assert images["china"].shape == (427, 640, 3) and images["china"].dtype == np.uint8


def test_missing_carrier_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(package_files.importlib.util, "find_spec",
                        lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps scikit-image==0\.26"):
        data.builtin_images()


# ----------------------------------------------------------------- moving mnist
def test_mnist_digits_file_format():
    digits, labels = data.mnist_digits()
    assert digits.shape == (5000, 28, 28) and digits.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
    # Real digits: mostly black background, bright strokes, centred mass.
    assert digits.max() == 255 and 0.1 < (digits > 0).mean() < 0.3
    assert (digits[:, :, :3] == 0).mean() > 0.95


def test_moving_mnist_real_bouncing_digits():
    videos, labels = data.moving_mnist(6, num_frames=30, size=48, num_digits=1, seed=3)
    assert videos.shape == (6, 30, 48, 48, 1) and videos.dtype == np.uint8
    digits, classes = data.mnist_digits()
    for v, label in zip(videos[..., 0], labels, strict=True):
        # Each frame is one whole MNIST digit, pasted somewhere: find it in frame 0.
        ys, xs = np.nonzero(v[0])
        matches = []
        for d in np.flatnonzero(classes == label):
            dy, dx = np.nonzero(digits[d])
            top, left = ys.min() - dy.min(), xs.min() - dx.min()
            if 0 <= top <= 20 and 0 <= left <= 20 and np.array_equal(
                    v[0, top:top + 28, left:left + 28], digits[d]):
                matches.append(d)
        assert matches, "frame 0 is not an MNIST digit of the returned class"
        assert (v.reshape(30, -1).sum(1) == v[0].sum()).all()  # Fully visible: it bounces.
        centres = np.array([np.argwhere(f).mean(0) for f in v])
        step = np.abs(np.diff(centres, axis=0))  # 0.1 * (48 - 28) = 2 px/frame, +1 rounding
        assert step.max() <= 3.0 and step.sum(1).mean() > 1.0
    again, _ = data.moving_mnist(6, num_frames=30, size=48, seed=3)
    other, _ = data.moving_mnist(6, num_frames=30, size=48, seed=4)
    np.testing.assert_array_equal(videos, again)
    assert not np.array_equal(videos, other)
    two, both = data.moving_mnist(4, num_frames=5, num_digits=2, seed=0, return_all_labels=True)
    first, first_labels = data.moving_mnist(4, num_frames=5, num_digits=2, seed=0)
    assert two.shape == (4, 5, 64, 64, 1) and both.shape == (4, 2)
    np.testing.assert_array_equal(both[:, 0], first_labels)
    with pytest.raises(ValueError, match="size"):
        data.moving_mnist(1, size=20)


def test_load_builtin_rejects_unknown():
    with pytest.raises(ValueError, match="moving_mnist"):
        data.load_builtin("ucf101")
    assert decode.media_kind("x.WEBM") == "video" and decode.media_kind("x.txt") is None
