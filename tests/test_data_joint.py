"""Joint image + video training (`mixed_pyramid_dataset`, `keras-hpdm train --images`): the
mix keeps its image fraction, images are still videos cut into the same pyramid, the stream
is reproducible and resumable, bad arguments are named, and models train on it."""

import json
import math
import shutil

import keras
import numpy as np
import pytest

from keras_hpdm import PatchDiffusionModel, PyramidSpec, data
from keras_hpdm.backbones import RINBackbone
from tests.data_helpers import (
    SPEC,
    noise_video,
    take,
    tensorflow_only,
    write_image,
    write_video,
)
from tests.test_cli import DATA, TRAIN, run_cli

SMALL = PyramidSpec((2, 4, 4), 2)  # target (4, 8, 8): cheap examples for the counting tests


def arrays(num_videos=12, num_images=20, seed=0):
    """Noise videos (never still) and noise images, both with digit labels."""
    rng = np.random.default_rng(seed)
    videos = rng.integers(0, 256, (num_videos, 6, 12, 12, 3), np.uint8)
    images = rng.integers(0, 256, (num_images, 12, 12, 3), np.uint8)
    return ((videos, rng.integers(0, 10, num_videos)),
            (images, rng.integers(0, 10, num_images)))


def is_still(patches):
    """Per example of `(B, L, f, h, w, C)` patches: every level's frames are all equal."""
    return np.all(patches == patches[:, :, :1], axis=(1, 2, 3, 4, 5))


def class_folders(root, video_classes, image_classes):
    """`root/videos/CLASS/v.mkv` and `root/images/CLASS/i.png`: one file per class."""
    for k, name in enumerate(video_classes):
        (root / "videos" / name).mkdir(parents=True)
        write_video(root / "videos" / name / "v.mkv", noise_video(10, 16, 16, seed=k))
    for k, name in enumerate(image_classes):
        (root / "images" / name).mkdir(parents=True)
        write_image(root / "images" / name / "i.png", noise_video(1, 16, 16, seed=k)[0])
    return str(root / "videos"), str(root / "images")


# ------------------------------------------------------------------------ the mix
@tensorflow_only
@pytest.mark.parametrize("fraction", [0.5, 0.25, 1 / 3])
def test_image_fraction_is_kept_in_every_batch(fraction):
    videos, images = arrays()
    batch_size, num_batches = 16, 150  # 2400 examples
    ds = data.mixed_pyramid_dataset(videos, images, SMALL, batch_size, image_fraction=fraction,
                                    seed=0, return_offsets=True)
    flags = np.stack([b["image"] for b in take(ds, num_batches)])  # (batches, B)
    n = flags.size
    # The tolerance a random (binomial) mix would get, 4 standard deviations; the fixed
    # interleave is far inside it, and holds in every batch too.
    assert abs(flags.mean() - fraction) <= 4 * math.sqrt(fraction * (1 - fraction) / n)
    per_batch = flags.sum(axis=1)
    assert set(per_batch) <= {math.floor(batch_size * fraction),
                              math.ceil(batch_size * fraction)}, per_batch
    assert ds.image_fraction == pytest.approx(fraction)
    assert (ds.num_video_examples, ds.num_image_examples, ds.num_examples) == (12, 20, 32)


@tensorflow_only
def test_fraction_zero_is_the_video_data_set_and_one_only_images():
    videos, images = arrays()
    only_videos = take(data.mixed_pyramid_dataset(videos, images, SMALL, 8, image_fraction=0,
                                                  seed=3, labels=None), 4)
    plain = take(data.pyramid_dataset(videos, SMALL, 8, seed=3), 4)
    for a, b in zip(only_videos, plain, strict=True):
        assert set(a) == set(b) == {"patches", "coords", "label"}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert not is_still(np.concatenate([b["patches"] for b in only_videos])).any()
    only_images = take(data.mixed_pyramid_dataset(videos, images, SMALL, 8, image_fraction=1,
                                                  seed=3, return_offsets=True), 4)
    assert all(b["image"].all() and is_still(b["patches"]).all() for b in only_images)


@tensorflow_only
def test_images_are_still_videos_cut_into_the_same_pyramid(tmp_path):
    """Files: PNG photos (one RGBA, one grayscale) and a video, with horizontal flips."""
    spec = SPEC  # target (8, 16, 16), 3 levels
    (tmp_path / "videos").mkdir()
    (tmp_path / "images").mkdir()
    write_video(tmp_path / "videos" / "a.mkv", noise_video(12, 24, 24, seed=1))
    rng = np.random.default_rng(0)
    write_image(tmp_path / "images" / "rgb.png", rng.integers(0, 256, (20, 28, 3), np.uint8))
    write_image(tmp_path / "images" / "rgba.png", rng.integers(0, 256, (30, 20, 4), np.uint8))
    write_image(tmp_path / "images" / "gray.png", rng.integers(0, 256, (24, 24), np.uint8))
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG not an image")
    with pytest.warns(data.SkippedMediaWarning, match="skipped 1 of 4 files") as caught:
        ds = data.mixed_pyramid_dataset(str(tmp_path / "videos"), str(tmp_path / "images"),
                                        spec, 8, seed=0, flip=True, return_offsets=True)
    assert caught[0].filename == __file__  # the warning points at the caller
    assert list(ds.skipped) == [str(tmp_path / "images" / "broken.png")]
    batches = take(ds, 3)
    plain = data.pyramid_dataset(str(tmp_path / "videos"), spec, 8, seed=0)
    for batch in batches:
        assert {k: v.shape for k, v in batch.items() if k in plain.element_spec} == {
            k: tuple(v.shape) for k, v in plain.element_spec.items()}
        images = batch["image"]
        assert images.sum() == 4  # 1:1
        np.testing.assert_array_equal(is_still(batch["patches"]), images)
        # Images draw real pyramids too: crops at every level, not one fixed window.
        assert (batch["frame_indices"][images] == 0).all()
        assert np.abs(batch["patches"][images]).max() <= 1.0
    offsets = np.concatenate([b["offsets"][b["image"]] for b in batches])
    assert len({tuple(o.ravel()) for o in offsets}) > 1


@tensorflow_only
def test_same_seed_same_batches_other_seed_other_batches():
    videos, images = arrays()

    def batches(seed):
        return take(data.mixed_pyramid_dataset(videos, images, SMALL, 8, image_fraction=0.25,
                                               seed=seed, flip=True), 3)

    first, again, other = batches(5), batches(5), batches(6)
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["patches"], b["patches"])
               for a, b in zip(first, other, strict=True))


@tensorflow_only
def test_start_example_resumes_each_source_exactly():
    """A run resumed at step `s` sees the batches an uninterrupted one would from `s` on."""
    videos, images = arrays()
    full = take(data.mixed_pyramid_dataset(videos, images, SMALL, 6, image_fraction=1 / 3,
                                           seed=2), 9)
    resumed = take(data.mixed_pyramid_dataset(videos, images, SMALL, 6, image_fraction=1 / 3,
                                              seed=2, start_example=5 * 6), 4)
    for a, b in zip(full[5:], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@tensorflow_only
def test_labels_follow_each_source(tmp_path):
    """Captions from one CSV for both sources' files; classes by sub-folder for both."""
    class_folders(tmp_path, ["cat", "dog"], ["cat", "dog"])
    ds = data.mixed_pyramid_dataset(str(tmp_path / "videos"), str(tmp_path / "images"), SMALL,
                                    8, labels="folders", seed=0)
    batch = take(ds, 1)[0]
    assert ds.class_names == ["cat", "dog"] and set(batch["label"]) == {0, 1}

    captions = tmp_path / "captions.csv"
    captions.write_text("path,caption\nvideos/cat/v.mkv,a moving cat\nvideos/dog/v.mkv,a dog\n"
                        "images/cat/i.png,a photo of a cat\nimages/dog/i.png,a dog photo\n")
    ds = data.mixed_pyramid_dataset(str(tmp_path / "videos"), str(tmp_path / "images"), SMALL,
                                    8, labels=str(captions), seed=0, return_offsets=True)
    batch = take(ds, 1)[0]
    texts = [t.decode() for t in batch["text"]]
    assert all(("photo" in t) == bool(image) for t, image in zip(texts, batch["image"],
                                                                strict=True))


# ------------------------------------------------------------------- bad arguments
@tensorflow_only
@pytest.mark.parametrize("fraction", [-0.1, 1.5, "half", None, float("nan"), True])
def test_bad_image_fraction_is_named(fraction):
    videos, images = arrays()
    with pytest.raises(ValueError, match=r"`image_fraction` must be a finite number in \[0, 1\]"):
        data.mixed_pyramid_dataset(videos, images, SMALL, 4, image_fraction=fraction)


@tensorflow_only
def test_bad_sources_and_labels_are_named(tmp_path):
    videos, images = arrays()
    with pytest.raises(ValueError, match="`image_source` must hold only images.*6 frames"):
        data.mixed_pyramid_dataset(videos, videos, SMALL, 4)
    (tmp_path / "clips").mkdir()
    write_video(tmp_path / "clips" / "a.mkv", noise_video(8, 16, 16))
    with pytest.raises(ValueError, match="`image_source` must hold only images.*a.mkv"):
        data.mixed_pyramid_dataset(videos, str(tmp_path / "clips"), SMALL, 4)
    data.prepare(videos[0], tmp_path / "video_shards")
    with pytest.raises(ValueError, match="`image_source` must hold only images.*records"):
        data.mixed_pyramid_dataset(videos, str(tmp_path / "video_shards"), SMALL, 4)
    # Shards prepared from images are fine.
    data.prepare(images[0], tmp_path / "image_shards")
    ds = data.mixed_pyramid_dataset(videos[0], str(tmp_path / "image_shards"), SMALL, 4,
                                    seed=0, return_offsets=True)
    assert is_still(take(ds, 1)[0]["patches"]).sum() == 2

    with pytest.raises(ValueError, match="`labels` and `image_labels`.*class labels.*no labels"):
        data.mixed_pyramid_dataset(videos, images[0], SMALL, 4)
    captions = [f"image {i}" for i in range(len(images[0]))]
    with pytest.raises(ValueError, match="`labels` and `image_labels`.*class labels.*captions"):
        data.mixed_pyramid_dataset(videos, (images[0], captions), SMALL, 4)
    folders = class_folders(tmp_path / "classes", ["cat", "dog"], ["cat", "fish"])
    with pytest.raises(ValueError, match="`image_labels` must use the videos' classes.*'dog'.*"
                                         "'fish'"):
        data.mixed_pyramid_dataset(*folders, SMALL, 4, labels="folders")
    # Integer classes that one source lacks at the top are the same ids: allowed.
    ds = data.mixed_pyramid_dataset(videos[0], images[0], SMALL, 4, labels=[0, 1] * 6,
                                    image_labels=list(range(10)) * 2, seed=0)
    assert ds.class_names == [str(i) for i in range(10)]
    with pytest.raises(ValueError, match="`tokenizer` needs captions"):
        data.mixed_pyramid_dataset(videos, images, SMALL, 4, tokenizer=lambda t: t)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['frame'\\]"):
        data.mixed_pyramid_dataset(videos, images, SMALL, 4, frame=4)
    with pytest.raises(ValueError, match="`batch_size`"):
        data.mixed_pyramid_dataset(videos, images, SMALL, 0)


# --------------------------------------------------------------------- training
@pytest.mark.usefixtures("single_thread_torch")
def test_patch_diffusion_model_fits_the_mixed_data_set():
    """Unconditional, the quickest to compile (the CLI tests train with classes)."""
    keras.utils.set_random_seed(0)
    spec = PyramidSpec((1, 4, 4), 2)  # the smallest train step: quick to compile
    videos = data.moving_mnist(8, num_frames=4, size=32, seed=0)[0]
    digits = data.mnist_digits()[0][:16, :, :, None]
    ds = data.mixed_pyramid_dataset(videos, digits, spec, 4, channels=1, seed=0)
    backbone = RINBackbone.from_preset("tiny", pyramid=spec, num_blocks=1, num_latent_layers=0,
                                       channels=1)
    model = PatchDiffusionModel(backbone, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    history = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2


# The CLI's smallest run (a 1-frame patch, one block): the train step compiles quickly.
IMAGE_TRAIN = [*TRAIN, "--patch-size", "1", "4", "4", "--backbone-option", "num_blocks=1",
               "--backbone-option", "num_latent_layers=0", "--images", "builtin:mnist",
               "--image-fraction", "0.25"]
SHOWN = f"data: {DATA} + builtin:mnist (16 videos + 5000 images, images 0.25 of each batch"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, single_thread_torch):
    out = tmp_path_factory.mktemp("joint") / "run"
    assert run_cli(*IMAGE_TRAIN, "--steps", 2, "--out", out) == 0
    return out


def test_cli_trains_with_images(image_run):
    state = json.loads((image_run / "training_state.json").read_text())
    assert state["step"] == 2 and np.isfinite(state["history"][-1]["loss"])
    assert (state["args"]["images"], state["args"]["image_fraction"]) == ("builtin:mnist", 0.25)


def test_cli_resume_keeps_the_images(image_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(image_run, out)
    assert run_cli("train", "--resume", "--out", out, "--steps", 3, "--verbose", "0") == 0
    assert SHOWN + ", 10 classes)" in capsys.readouterr().out
    state = json.loads((out / "training_state.json").read_text())
    assert state["step"] == 3 and len(state["resumed"]) == 1
    assert (state["args"]["images"], state["args"]["image_fraction"]) == ("builtin:mnist", 0.25)


def test_cli_image_arguments_are_checked(image_run, tmp_path, capsys):
    # Other images on resume, or image options without images, are refused.
    assert run_cli("train", "--resume", "--out", image_run, "--images", "builtin:images") == 2
    assert "trained with --images 'builtin:mnist', not 'builtin:images'" in \
        capsys.readouterr().err
    assert run_cli(*TRAIN, "--image-fraction", "0.5", "--out", tmp_path / "other") == 2
    assert "--image-fraction only applies with --images" in capsys.readouterr().err
    assert run_cli(*TRAIN, "--images", "builtin:mnist", "--image-fraction", "2",
                   "--out", tmp_path / "other") == 2
    assert "argument --image-fraction: must be a finite number in [0, 1], got 2" in \
        capsys.readouterr().err
    assert not (tmp_path / "other").exists()
