"""`prepare` -> TFRecord shards -> `pyramid_dataset`: round trips, sharding, damage.

Pure tf.data + NumPy: runs once, under the TensorFlow backend.
"""

import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

from keras_hpdm import data
from keras_hpdm.data import decode, shards
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


def by_index(batches):
    out = {}
    for b in batches:
        for i, idx in enumerate(b["index"]):
            out[int(idx)] = {k: v[i] for k, v in b.items()}
    return out


def make_media(tmp_path, content):
    """Two lossless videos in a/, a still and a broken file in b/."""
    folder = tmp_path / "media"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    paths = [
        write_video(folder / "a" / "v0.mkv", content(11, 16, 20, seed=0), fps=25),
        write_video(folder / "a" / "v1.mkv", content(9, 18, 16, seed=1), fps=30),
        write_image(folder / "b" / "still.png", content(1, 17, 21, seed=2)[0]),
    ]
    (folder / "b" / "broken.mp4").write_bytes(b"\x00" * 64)
    return folder, paths


@pytest.fixture
def media(tmp_path):
    return make_media(tmp_path, noise_video)


def test_prepare_png_round_trip_is_exact(media, tmp_path):
    folder, paths = media
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = data.prepare(str(folder), tmp_path / "shards", num_shards=2)
    assert len([w for w in caught if w.category is data.SkippedMediaWarning]) == 1
    assert (summary["num_records"], summary["num_skipped"], summary["num_sources"]) == (3, 1, 4)
    assert summary["num_frames"] == 11 + 9 + 1 and len(summary["files"]) == 2
    meta = json.loads((tmp_path / "shards" / shards.METADATA_NAME).read_text())
    assert [f["num_records"] for f in meta["files"]] == [2, 1]
    records = data.read_records(str(tmp_path / "shards"))
    assert [os.path.basename(r["source"]) for r in records] == ["v0.mkv", "v1.mkv", "still.png"]
    for record, path in zip(records, paths, strict=True):
        np.testing.assert_array_equal(record["frames"], data.decode_video(path))
    assert [r["fps"] for r in records] == [25.0, 30.0, 0.0]
    assert data.verify_shards(str(tmp_path / "shards"))["ok"]

    # Shards prepared at the target give exactly the pyramids of the file pipeline (same
    # seeds): both shrink frames on decode (FFmpeg / Pillow area averaging).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.SkippedMediaWarning)
        data.prepare(str(folder), tmp_path / "resized", num_shards=2,
                     resize=SPEC.target_size[1:])
    kwargs = dict(seed=4, flip=True, shuffle=False, repeat=False, return_offsets=True)
    with pytest.warns(data.SkippedMediaWarning):
        from_files = by_index(take(data.pyramid_dataset(str(folder), SPEC, 3, **kwargs), 1))
    from_shards = data.pyramid_dataset(str(tmp_path / "resized"), SPEC, 3, **kwargs)
    got = by_index(take(from_shards, 1))
    assert sorted(got) == sorted(from_files) == [0, 1, 2]
    for i in got:
        for key in ("patches", "coords", "offsets", "frame_indices", "crop_offset"):
            np.testing.assert_allclose(got[i][key], from_files[i][key], atol=1e-6, rtol=0)
    # Full-size shards are resized by the pipeline (TF bilinear with antialiasing), a
    # different low-pass filter from the files' on-decode shrink: the same geometry.
    full = by_index(take(data.pyramid_dataset(str(tmp_path / "shards"), SPEC, 3, **kwargs), 1))
    for i in full:
        for key in ("coords", "offsets", "frame_indices", "crop_offset"):
            np.testing.assert_array_equal(full[i][key], from_files[i][key])
    with pytest.raises(ValueError, match="already holds prepared shards"):
        data.prepare(str(folder), tmp_path / "shards")


def test_prepare_jpeg_resize_chunks_and_labels(tmp_path):
    folder, paths = make_media(tmp_path, smooth_video)  # JPEG is for natural-looking frames
    out = tmp_path / "jpeg"
    with pytest.warns(data.SkippedMediaWarning):
        summary = data.prepare(str(folder), out, num_shards=3, image_format="jpeg", frames=4,
                               resize=(16, 16), labels="folders")
    # v0: 11 frames -> 2 chunks, v1: 9 -> 2 chunks, the still: 1 record.
    assert summary["num_records"] == 5 and summary["class_names"] == ["a", "b"]
    records = data.read_records(str(out))
    assert [(os.path.basename(r["source"]), r["start"], r["label"]) for r in records] == [
        ("v0.mkv", 0, 0), ("v0.mkv", 4, 0), ("v1.mkv", 0, 0), ("v1.mkv", 4, 0),
        ("still.png", 0, 1)]
    for record in records:
        path = next(p for p in paths if p == record["source"])
        full = data.decode_video(path)
        size = decode.resized_cover_shape(*full.shape[1:3], (16, 16))
        assert record["frames"].shape[1:3] == size and min(size) == 16
        # Shrunk on decode, as the file pipeline does (area averaging).
        want = data.decode_video(path, cover_size=(16, 16))[record["start"]:][:4]
        err = np.abs(record["frames"].astype(np.float32) - want)
        # JPEG q95 on 16x20 frames: ~1.5 levels mean error (a wrong frame or crop: ~50).
        assert err.mean() < 2.5 and err.max() < 16, (err.mean(), err.max())
    # 4-frame clips, resampled in time to the pyramid's 8 frames (nearest frame).
    ds = data.pyramid_dataset(str(out), SPEC, 5, labels=True, shuffle=False, repeat=False,
                              return_offsets=True, seed=0, frames=4)
    batch = take(ds, 1)[0]
    for i, indices in zip(batch["index"], batch["frame_indices"], strict=True):
        expected = [0] * 8 if i == 4 else [0, 0, 1, 1, 2, 2, 3, 3]
        np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(batch["label"], [records[i]["label"] for i in batch["index"]])
    assert ds.class_names == ["a", "b"]
    with pytest.raises(ValueError, match="labels=True"):
        data.pyramid_dataset(str(out), SPEC, 5, labels="folders")


def test_shard_reading_disjoint_covering_deterministic_cached(tmp_path):
    videos, labels = data.moving_mnist(10, num_frames=9, size=32, seed=1)
    out = tmp_path / "mm"
    summary = data.prepare((videos, labels), out, num_shards=4)
    assert summary["num_records"] == 10 and summary["label_kind"] == "label"
    records = data.read_records(str(out))
    np.testing.assert_array_equal(np.stack([r["frames"] for r in records]), videos)
    for count in (2, 3):  # 2: whole files per shard; 3: every 3rd record
        seen = []
        for index in range(count):
            ds = data.pyramid_dataset(str(out), SPEC, 4, shard=(index, count), repeat=False,
                                      drop_remainder=False, return_offsets=True, seed=0)
            ids = np.concatenate([b["index"] for b in take(ds, 10)])
            assert len(ids) == ds.num_examples
            seen.append(set(ids.tolist()))
        assert set.union(*seen) == set(range(10)) and sum(map(len, seen)) == 10
    a, b = (take(data.pyramid_dataset(str(out), SPEC, 5, seed=9, flip=True, shuffle_buffer=4,
                                      return_offsets=True), 6) for _ in range(2))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["patches"], y["patches"])
    # Every epoch visits every record once (stateless file order + block shuffle).
    stream = np.concatenate([x["index"] for x in a]).reshape(3, 10)
    assert (np.sort(stream, axis=1) == np.arange(10)).all()
    assert len({tuple(e) for e in stream}) == 3
    # cache=True (records decoded once into memory) against the source arrays:
    # 32x32 -> 16x16, then the pyramid at the returned offsets.
    cached = by_index(take(data.pyramid_dataset(str(out), SPEC, 10, seed=2, repeat=False,
                                                return_offsets=True, labels=True, cache=True,
                                                channels=1), 1))
    for i in range(10):
        assert cached[i]["label"] == labels[i]
        clip = videos[i][cached[i]["frame_indices"]].astype(np.float32)
        clip = tf.image.resize(clip, (16, 16), method="bilinear", antialias=True).numpy()
        assert tuple(cached[i]["crop_offset"]) == (0, 0)
        want = SPEC.extract(clip, cached[i]["offsets"]) / 127.5 - 1
        np.testing.assert_allclose(cached[i]["patches"], want, atol=1e-5)


def test_damaged_and_missing_shards(tmp_path):
    videos = noise_video(12 * 8, 16, 16).reshape(12, 8, 16, 16, 3)
    out = tmp_path / "s"
    data.prepare(videos, out, num_shards=3)
    files = sorted(out.glob("*.tfrecord"))
    raw = files[0].read_bytes()
    files[0].write_bytes(raw[: int(len(raw) * 0.6)])  # 4 records -> 2 intact
    os.remove(files[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.pyramid_dataset(str(out), SPEC, 1, repeat=False, seed=0,
                                  return_offsets=True)
    ours = [str(w.message) for w in caught if w.category is data.SkippedMediaWarning]
    assert len(ours) == 1 and "1 damaged shard" in ours[0] and "1 missing shard" in ours[0]
    ids = sorted(int(b["index"][0]) for b in take(ds, 20))
    assert ids == [0, 2, 3, 5, 8, 11]  # file 0: 0, 3 (6, 9 cut off); file 2: 2, 5, 8, 11
    report = data.verify_shards(str(out))
    assert not report["ok"] and report["readable"] == 6 and len(report["damaged_files"]) == 2
