"""`pyramid_dataset`: exact pyramids, determinism, sharding, labels, bad files.

Pure tf.data + NumPy (no Keras model): backend-independent, so it runs once, under the
TensorFlow backend. The `fit` test in test_data_fit.py runs under every backend.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from keras_hpdm import data
from keras_hpdm.data import decode
from tests.data_helpers import (
    SPEC,
    noise_video,
    smooth_video,
    take,
    tensorflow_only,
    write_image,
    write_video,
)

pytestmark = tensorflow_only


def reference_patches(clip, example, spec=SPEC):
    """Crop/flip a decoded `(F, H', W', C)` clip at the example's geometry, then extract."""
    f, h, w = spec.target_size
    top, left = example["crop_offset"]
    video = clip[:, top : top + h, left : left + w]
    if example["flipped"]:
        video = video[:, :, ::-1]
    return spec.extract(video, example["offsets"])


def examples(batches):
    keys = batches[0].keys()
    return [{k: b[k][i] for k in keys} for b in batches for i in range(len(b["patches"]))]


def test_patches_equal_extract_on_arrays():
    videos = noise_video(12 * 20, 16, 24).reshape(12, 20, 16, 24, 3)  # covers (16, 16) as is
    ds = data.pyramid_dataset(videos, SPEC, 4, frame_stride=2, flip=True, seed=5,
                              repeat=False, return_offsets=True)
    batches = take(ds, 4)
    assert len(batches) == 3 and ds.num_examples == 12
    assert batches[0]["patches"].shape == (4, 3, 2, 4, 4, 3)
    assert batches[0]["patches"].dtype == np.float32 and batches[0]["coords"].shape == (4, 3, 6)
    flips, starts, lefts = set(), set(), set()
    for ex in examples(batches):
        idx = ex["frame_indices"]
        assert idx[0] + 14 <= 19 and np.array_equal(idx, idx[0] + 2 * np.arange(8))
        assert ex["crop_offset"][0] == 0 and 0 <= ex["crop_offset"][1] <= 8
        clip = videos[ex["index"]][idx]
        expected = reference_patches(clip, ex) / 127.5 - 1
        np.testing.assert_allclose(ex["patches"], expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(ex["coords"], SPEC.coords_from_offsets(ex["offsets"]))
        SPEC.check_offsets(ex["offsets"])
        flips.add(bool(ex["flipped"]))
        starts.add(int(idx[0]))
        lefts.add(int(ex["crop_offset"][1]))
    assert flips == {False, True} and len(starts) > 2 and len(lefts) > 2  # really random
    assert sorted(ex["index"] for ex in examples(batches)) == list(range(12))


def test_patches_equal_extract_on_decoded_file_with_resize():
    path = data.builtin_clip_path("carphone")  # 176x144 -> covers (16, 16) at 20x16
    ds = data.pyramid_dataset(path, SPEC, 2, crop="random", seed=1, return_offsets=True,
                              fps=10)
    for ex in examples(take(ds, 2)):
        idx = ex["frame_indices"]
        np.testing.assert_array_equal(np.diff(idx), [3] * 7)  # 29.97 fps -> 10 fps
        # Shrunk on decode (FFmpeg, area average) to the size covering the target.
        clip = data.decode_video(path, indices=idx, cover_size=(16, 16)).astype(np.float32)
        assert clip.shape[1:3] == decode.resized_cover_shape(144, 176, (16, 16)) == (16, 20)
        np.testing.assert_allclose(ex["patches"], reference_patches(clip, ex) / 127.5 - 1,
                                   atol=1e-5, rtol=0)
    gray = data.pyramid_dataset(path, SPEC, 1, crop="center", seed=1, channels=1,
                                return_offsets=True)
    ex = examples(take(gray, 1))[0]
    clip = data.decode_video(path, indices=ex["frame_indices"], cover_size=(16, 16))
    clip = (clip.astype(np.float64) @ [0.299, 0.587, 0.114])[..., None].astype(np.float32)
    assert tuple(ex["crop_offset"]) == (0, 2) and ex["patches"].shape[-1] == 1
    np.testing.assert_allclose(ex["patches"], reference_patches(clip, ex) / 127.5 - 1,
                               atol=1e-5, rtol=0)


def test_float_source_and_still_images():
    videos = np.random.default_rng(0).uniform(-1, 1, (2, 1, 16, 16, 1)).astype(np.float32)
    ds = data.pyramid_dataset(videos, SPEC, 2, seed=0, return_offsets=True, repeat=False)
    for ex in examples(take(ds, 1)):
        assert (ex["frame_indices"] == 0).all()  # a still, repeated in time
        clip = np.repeat(videos[ex["index"]], 8, axis=0)
        np.testing.assert_allclose(ex["patches"][..., :1], reference_patches(clip, ex)[..., :1],
                                   atol=1e-6)
        np.testing.assert_allclose(ex["patches"][..., 0], ex["patches"][..., 2])  # 1 -> 3 ch
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        data.pyramid_dataset(videos * 3, SPEC, 2)


def test_same_seed_same_batches_and_epochs_differ(tmp_path):
    videos, labels = data.moving_mnist(10, num_frames=12, size=32, seed=0)

    def make(seed, **kw):
        return data.pyramid_dataset((videos, labels), SPEC, 4, seed=seed, flip=True,
                                    return_offsets=True, **kw)

    a, b, c = take(make(7), 5), take(make(7), 5), take(make(8), 5)
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not all(np.array_equal(x["patches"], y["patches"]) for x, y in zip(a, c, strict=True))
    # repeat=True: every epoch (10 examples) is a permutation, each a different one.
    stream = np.concatenate([x["index"] for x in a]).reshape(2, 10)
    assert (np.sort(stream, axis=1) == np.arange(10)).all()
    assert not np.array_equal(stream[0], stream[1])
    # Files, parallel decoding, deterministic order.
    paths = [write_video(tmp_path / f"{i}.mkv", smooth_video(12, 16, 20, seed=i))
             for i in range(5)]
    f1 = take(data.pyramid_dataset(paths, SPEC, 2, seed=3, num_parallel_calls=4), 4)
    f2 = take(data.pyramid_dataset(paths, SPEC, 2, seed=3, num_parallel_calls=4), 4)
    for x, y in zip(f1, f2, strict=True):
        np.testing.assert_array_equal(x["patches"], y["patches"])
    # repeat=False: each pass (Keras epoch) is a new permutation, replayed by the seed.
    once = make(7, repeat=False, drop_remainder=False)
    first = np.concatenate([x["index"] for x in take(once, 10)])
    second = np.concatenate([x["index"] for x in take(once, 10)])
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)
    replay = np.concatenate([x["index"] for x in take(make(7, repeat=False,
                                                           drop_remainder=False), 10)])
    np.testing.assert_array_equal(first, replay)


def test_repeated_stream_ignores_tensorflow_global_random_state():
    """The same `seed` gives the same batches whatever TensorFlow's global seed is and
    however many random ops ran since it was set (building a model under the TensorFlow
    backend is such an op): a resumed or multi-process run rebuilds its data exactly."""
    import tensorflow as tf

    videos, labels = data.moving_mnist(6, num_frames=12, size=32, seed=0)

    def batches():
        return take(data.pyramid_dataset((videos, labels), SPEC, 4, seed=5, flip=True,
                                         return_offsets=True), 4)  # over 2 passes

    tf.random.set_seed(1)
    first = batches()
    tf.random.set_seed(2)
    tf.random.uniform(())  # a random op since the seed was set
    second = batches()
    tf.random.set_seed(1)
    for x, y in zip(first, second, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_start_example_continues_the_stream(tmp_path):
    """A resumed run passes `start_example = step * batch_size`: the data set must be the
    whole stream less its first examples, across pass boundaries, for every source kind."""
    videos, labels = data.moving_mnist(6, num_frames=8, size=28, seed=0)
    paths = [write_video(tmp_path / f"{i}.mkv", smooth_video(8, 16, 16, seed=i))
             for i in range(3)]
    data.prepare((videos, labels), tmp_path / "shards", num_shards=2)
    for source, start in [((videos, labels), 8), (paths, 4), (str(tmp_path / "shards"), 9)]:
        def make(source=source, **kw):
            return data.pyramid_dataset(source, SPEC, 1, seed=4, flip=True,
                                        return_offsets=True, **kw)

        whole = examples(take(make(), start + 5))[start:]
        later = examples(take(make(start_example=start), 5))
        for x, y in zip(whole, later, strict=True):
            for key in ("index", "patches", "offsets", "flipped"):
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{source}: {key}")
    with pytest.raises(ValueError, match="start_example"):
        data.pyramid_dataset(videos, SPEC, 1, start_example=-1)
    with pytest.raises(ValueError, match="start_example.*6 examples"):
        data.pyramid_dataset(videos, SPEC, 1, start_example=6, repeat=False)


def test_shards_disjoint_and_covering():
    videos = noise_video(11 * 8, 16, 16).reshape(11, 8, 16, 16, 3)
    seen = []
    for index in range(3):
        ds = data.pyramid_dataset(videos, SPEC, 2, seed=1, shard=(index, 3), repeat=False,
                                  drop_remainder=False, return_offsets=True)
        ids = np.concatenate([x["index"] for x in take(ds, 100)])
        assert len(ids) == ds.num_examples == len(range(index, 11, 3))
        seen.append(set(ids.tolist()))
    assert set.union(*seen) == set(range(11)) and sum(map(len, seen)) == 11
    with pytest.raises(ValueError, match="shard"):
        data.pyramid_dataset(videos, SPEC, 2, shard=(3, 3))


def test_labels_folders_csv_json_and_captions(tmp_path):
    for cls, count in [("cat", 2), ("dog", 1)]:
        (tmp_path / cls).mkdir()
        for i in range(count):
            write_image(tmp_path / cls / f"{i}.png", smooth_video(1, 16, 16, seed=i)[0])
    ds = data.pyramid_dataset(str(tmp_path), SPEC, 3, labels="folders", seed=0,
                              return_offsets=True, repeat=False)
    assert ds.class_names == ["cat", "dog"]
    (batch,) = take(ds, 1)
    # Sorted file order: cat/0, cat/1, dog/0.
    np.testing.assert_array_equal(batch["label"], [[0, 0, 1][i] for i in batch["index"]])
    assert batch["label"].dtype == np.int32
    (tmp_path / "caps.csv").write_text("path,caption\ncat/0.png,a cat\ncat/1.png,"
                                       "\"another, cat\"\ndog/0.png,a dog\n")
    ds = data.pyramid_dataset(str(tmp_path), SPEC, 3, labels=str(tmp_path / "caps.csv"),
                              seed=0, return_offsets=True, repeat=False)
    (batch,) = take(ds, 1)
    texts = ["a cat", "another, cat", "a dog"]
    assert [t.decode() for t in batch["text"]] == [texts[i] for i in batch["index"]]
    # Relative path, or a basename unique among the files ("0.png" would be ambiguous).
    (tmp_path / "l.json").write_text(json.dumps({"cat/0.png": 4, "1.png": 7, "0.png": 9}))
    with pytest.warns(data.SkippedMediaWarning, match="1 no label"):
        ds = data.pyramid_dataset(str(tmp_path), SPEC, 2, labels=str(tmp_path / "l.json"),
                                  seed=0, return_offsets=True, repeat=False)
    (batch,) = take(ds, 1)
    assert dict(zip(batch["index"].tolist(), batch["label"].tolist(), strict=True)) == {
        0: 4, 1: 7}
    assert list(ds.skipped) == [str(tmp_path / "dog" / "0.png")]
    mm = data.pyramid_dataset("builtin:moving_mnist?num_videos=6&num_frames=8&size=32",
                              SPEC, 6, labels=True, seed=0, shuffle=False, repeat=False,
                              return_offsets=True)
    _, labels = data.moving_mnist(6, num_frames=8, size=32)
    (batch,) = take(mm, 1)
    np.testing.assert_array_equal(batch["label"], labels[batch["index"]])


def test_bad_files_skipped_counted_one_warning(tmp_path):
    good = [write_video(tmp_path / "a.mp4", smooth_video(10, 16, 16)),
            write_video(tmp_path / "b.webm", smooth_video(12, 16, 20, seed=1)),
            write_image(tmp_path / "c.png", smooth_video(1, 20, 16)[0])]
    raw = open(good[0], "rb").read()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.avi").write_bytes(os.urandom(3000))
    (tmp_path / "half.mp4").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 50)
    write_video(tmp_path / "short.mkv", smooth_video(5, 16, 16))  # < 8 frames
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.pyramid_dataset(str(tmp_path), SPEC, 1, seed=0, repeat=False,
                                  return_offsets=True)
    ours = [w for w in caught if issubclass(w.category, data.SkippedMediaWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "skipped 5 of 8 files" in str(ours[0].message)
    assert sorted(os.path.basename(p) for p in ds.skipped) == [
        "bad.jpg", "empty.mp4", "half.mp4", "junk.avi", "short.mkv"]
    assert ds.skipped[str(tmp_path / "short.mkv")].startswith("too short")
    ids = sorted(int(x["index"][0]) for x in take(ds, 10))
    assert ids == [0, 1, 2] and ds.num_examples == 3

    # A file that breaks after the data set was built is skipped while iterating.
    later = data.pyramid_dataset(str(tmp_path), SPEC, 1, seed=0, repeat=False,
                                 shuffle=False, return_offsets=True)
    with open(good[1], "r+b") as f:
        f.truncate(40)
    with pytest.warns(data.SkippedMediaWarning, match="b.webm"):
        got = [int(x["index"][0]) for x in take(later, 10)]
    assert got == [0, 2] and "b.webm" in " ".join(later.skipped)

    bad_only = tmp_path / "bad"
    bad_only.mkdir()
    (bad_only / "x.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=f"No usable media in {bad_only}.*1 undecodable"):
        data.pyramid_dataset(str(bad_only), SPEC, 1)
    with pytest.raises(ValueError, match="No video or image files"):
        data.pyramid_dataset(str(_empty(tmp_path)), SPEC, 1)


def _empty(tmp_path):
    folder = tmp_path / "empty_dir"
    folder.mkdir()
    return folder


def test_cache_gives_the_same_pyramids(tmp_path):
    paths = [write_video(tmp_path / f"{i}.mkv", smooth_video(10, 16, 16, seed=i))
             for i in range(3)]
    plain = data.pyramid_dataset(paths, SPEC, 3, seed=2, repeat=False, return_offsets=True)
    want = [take(plain, 1)[0] for _ in range(2)]  # the second pass has a new epoch key
    cached = data.pyramid_dataset(paths, SPEC, 3, seed=2, repeat=False, cache=True,
                                  return_offsets=True)
    for path in paths:  # the cache decoded every file when the data set was built
        os.remove(path)
    for want_batch in want:
        batches = take(cached, 1)
        assert batches, f"cache=True read the (deleted) files again: {cached.skipped}"
        got = batches[0]
        assert sorted(got["index"]) == [0, 1, 2]
        order, ref = np.argsort(got["index"]), np.argsort(want_batch["index"])
        np.testing.assert_allclose(got["patches"][order], want_batch["patches"][ref],
                                   atol=1e-6)
    assert not cached.skipped


def test_clips_per_file_cuts_exact_clips_from_one_decode(tmp_path, monkeypatch):
    paths = [write_video(tmp_path / f"{i}.mkv", smooth_video(20, 16, 20, seed=i))
             for i in range(4)]
    decodes = []
    real_decode = decode.decode_video
    monkeypatch.setattr(decode, "decode_video",
                        lambda path, **kw: decodes.append(path) or real_decode(path, **kw))
    ds = data.pyramid_dataset(paths, SPEC, 4, seed=5, flip=True, return_offsets=True,
                              clips_per_file=3, repeat=False)
    assert ds.num_examples == 12
    got = examples(take(ds, 3))
    order = [int(ex["index"]) for ex in got]
    assert sorted(order) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(decodes) == 4, "one decode per file, not per clip"
    # Mixed across files: clips left grouped give 8 neighbours from the same file, a uniform
    # permutation 2 on average.
    assert sum(a == b for a, b in zip(order, order[1:], strict=False)) < 8, order
    for ex in got:  # each clip is cut at its own place from the shared decode
        clip = real_decode(paths[ex["index"]], indices=ex["frame_indices"],
                           cover_size=(16, 16)).astype(np.float32)
        np.testing.assert_allclose(ex["patches"], reference_patches(clip, ex) / 127.5 - 1,
                                   atol=1e-5, rtol=0)
    for i in range(4):
        mine = [ex for ex in got if ex["index"] == i]
        draws = {(tuple(ex["frame_indices"]), tuple(ex["crop_offset"]),
                  tuple(ex["offsets"].ravel()), bool(ex["flipped"])) for ex in mine}
        assert len(draws) == 3, f"file {i}: its clips repeat one draw"
    # One clip per file (the default) is the stream every other test checks.
    one = take(data.pyramid_dataset(paths, SPEC, 4, seed=5, flip=True, clips_per_file=1), 2)
    default = take(data.pyramid_dataset(paths, SPEC, 4, seed=5, flip=True), 2)
    for x, y in zip(one, default, strict=True):
        np.testing.assert_array_equal(x["patches"], y["patches"])


def test_clips_per_file_resumes_and_skips_bad_files(tmp_path, monkeypatch):
    from keras_hpdm.data import file_builder

    monkeypatch.setattr(file_builder, "MIX_FILES", 2)  # mixing blocks of 2 files x 2 clips
    paths = [write_video(tmp_path / f"{i}.mkv", smooth_video(12, 16, 16, seed=i))
             for i in range(5)]

    def make(**kw):
        return data.pyramid_dataset(paths, SPEC, 1, seed=4, flip=True, return_offsets=True,
                                    clips_per_file=2, **kw)

    whole = examples(take(make(), 27))  # 10 examples per pass
    for start in (3, 4, 9, 13, 20):  # inside a block, at one, at a pass end, later passes
        later = examples(take(make(start_example=start), 7))
        for x, y in zip(whole[start:], later, strict=False):
            for key in ("index", "patches", "offsets", "frame_indices", "flipped"):
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{start}: {key}")
    ds = make(repeat=False)
    with open(paths[3], "wb") as f:  # damaged after the data set was built
        f.write(b"not a video")
    with pytest.warns(data.SkippedMediaWarning, match="3.mkv"):
        order = [int(ex["index"]) for ex in examples(take(ds, 10))]
    assert sorted(order) == [0, 0, 1, 1, 2, 2, 4, 4]
    assert paths[3] in ds.skipped


def test_clips_per_file_argument_errors(tmp_path):
    videos = noise_video(16, 16, 16).reshape(2, 8, 16, 16, 3)
    path = write_video(tmp_path / "a.mkv", smooth_video(8, 16, 16))
    for source, kwargs in [(videos, {"clips_per_file": 2}),
                           (path, {"clips_per_file": 2, "cache": True})]:
        with pytest.raises(ValueError, match="clips_per_file"):
            data.pyramid_dataset(source, SPEC, 2, **kwargs)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="clips_per_file"):
            data.pyramid_dataset(path, SPEC, 2, clips_per_file=bad)


def test_argument_errors():
    videos = noise_video(16, 16, 16).reshape(2, 8, 16, 16, 3)
    for kwargs, match in [({"crop": "left"}, "crop"), ({"channels": 2}, "channels"),
                          ({"seed": -1}, "seed"), ({"fps": 10}, "fps"),
                          ({"frames": 0}, "frames"), ({"frame_stride": 2}, "clip needs 15")]:
        with pytest.raises(ValueError, match=match):
            data.pyramid_dataset(videos, SPEC, 2, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        data.pyramid_dataset(videos, SPEC, 0)
    with pytest.raises(TypeError, match="PyramidSpec"):
        data.pyramid_dataset(videos, (2, 4, 4), 2)
    with pytest.raises(ValueError, match="builtin"):
        data.pyramid_dataset("/no/such/path", SPEC, 2)


def test_interpreter_exits_with_a_live_file_iterator(tmp_path):
    # TF 2.21 deadlocks at exit when tf.data threads still call Python (py_function);
    # the pipeline's exit hook must prevent that.
    path = data.builtin_clip_path("carphone")
    script = tmp_path / "live.py"
    script.write_text(textwrap.dedent(f"""
        from keras_hpdm import PyramidSpec, data
        ds = data.pyramid_dataset({path!r}, PyramidSpec((2, 4, 4), 3), 2, seed=0)
        iterator = iter(ds)
        next(iterator)
        print("done", flush=True)
    """))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]
