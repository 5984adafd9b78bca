"""Bad data (issue 14): clips that never decode, integer labels, degenerate or huge frames,
damaged shards and media. Every failure is one clear error or one reported skip naming the
file, never a hang or a library traceback.

Pure tf.data + NumPy (plus the CLI's data commands): runs once, under the TensorFlow backend.
"""

import json
import os
import re
import shutil
import threading
import warnings

import av
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_hpdm import PyramidSpec, data
from keras_hpdm.cli import main
from keras_hpdm.data import builder, decode, exit_guard, pipeline, sources
from keras_hpdm.data import shards as shards_module
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


def run_cli(*argv):
    try:
        return main(["--backend", "tensorflow", *map(str, argv)]) or 0
    except SystemExit as e:
        return e.code


def faststart(src, dst):
    """Remuxes an MP4 with its index in front (as web video is): a truncated copy keeps the
    whole header, which promises every frame, while only the first ones are there."""
    with av.open(str(src)) as inp, av.open(str(dst), "w",
                                           options={"movflags": "faststart"}) as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is not None:
                packet.stream = copy
                out.mux(packet)
    return str(dst)


def truncate_copy(src, dst, fraction):
    raw = open(src, "rb").read()
    open(dst, "wb").write(raw[: int(len(raw) * fraction)])
    return str(dst)


def flip_bytes(src, dst, positions):
    raw = bytearray(open(src, "rb").read())
    for p in positions:
        raw[p % len(raw)] ^= 0xFF
    open(dst, "wb").write(bytes(raw))
    return str(dst)


# ----------------------------------------------------------- 1: no endless retries
def error_within(fn, timeout=60):
    """The exception `fn()` raises, or None. A data set still retrying after `timeout` s is
    stopped the way interpreter exit stops it (new decodes are refused, which ends its
    iterator), and the test fails: a regression cannot hang the suite."""
    outcome = {}

    def target():
        try:
            fn()
        except BaseException as e:  # SystemExit from the CLI included
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        exit_guard.CALLS.stopping.set()
        thread.join(30)
        exit_guard.CALLS.stopping.clear()
        pytest.fail(f"still retrying undecodable clips after {timeout} s")
    return outcome.get("error")


def test_undecodable_clips_end_with_an_error_not_a_hang(tmp_path, capsys):
    # The file: a faststart MP4 cut short, whose header promises 120 frames and
    # whose 19 packets (what the probe counted) hold only 16 decodable frames.
    whole = faststart(data.builtin_clip_path("carphone"), tmp_path / "whole.mp4")
    cut = truncate_copy(whole, tmp_path / "cut.mp4", 0.18)
    with av.open(cut) as container:
        stream = container.streams.video[0]
        packets = sum(1 for p in container.demux(stream) if p.size > 0)
        assert stream.frames == 120 and packets == 19
    spec = PyramidSpec((1, 8, 8), 3)  # 4 frames at stride 6: a clip spans 19 frames

    def first_batch(source):
        next(iter(data.pyramid_dataset(source, spec, 2, frame_stride=6, seed=0)))

    error = error_within(lambda: first_batch(cut))
    assert isinstance(error, ValueError), error
    too_short = f"{cut}: too short: 16 frames, the clip needs 19"
    assert str(error).startswith(f"No usable media in {cut}") and too_short in str(error)
    error = error_within(lambda: main([
        "--backend", "tensorflow", "train", cut, "--patch-size", "1", "8", "8", "--levels",
        "3", "--frame-stride", "6", "--batch-size", "2", "--steps", "2", "--out",
        str(tmp_path / "run")]))
    assert isinstance(error, SystemExit) and error.code == 2, error
    assert too_short in capsys.readouterr().err

    # Damaged after the data set was built: every clip fails while iterating.
    intact = str(shutil.copy(whole, tmp_path / "intact.mp4"))
    ds = data.pyramid_dataset(intact, spec, 2, frame_stride=6, seed=0)
    with open(intact, "r+b") as f:
        f.truncate(40000)
    with pytest.warns(data.SkippedMediaWarning, match="intact.mp4 failed to decode"):
        error = error_within(lambda: next(iter(ds)))
    message = pipeline.data_error_message(error)
    # The count is the real one: decodes already in flight (parallel map) when the budget is
    # reached can fail too, so a loaded machine may report 51 or more.
    run = re.match(r"keras_hpdm\.data: (\d+) clips in a row failed to decode "
                   rf"\(FAILURE_BUDGET={builder.FAILURE_BUDGET}\) in {re.escape(intact)}",
                   message)
    assert run and int(run.group(1)) >= builder.FAILURE_BUDGET, error
    assert f"{intact}: undecodable: needs frame" in message and "Traceback" not in str(error)


# ----------------------------------------------------------------- 2: int labels
def test_integer_labels_from_csv_arrays_and_prepared_shards(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    names = ["a.png", "b.png", "c.png"]
    for i, name in enumerate(names):
        write_image(folder / name, smooth_video(1, 16, 16, seed=i)[0])
    want = [2, 0, 2]  # class 1 absent: ids still mean classes, 3 classes
    classes = ["0", "1", "2"]
    with_header = tmp_path / "labels.csv"
    with_header.write_text("path,label\n" + "".join(
        f"media/{n},{v}\n" for n, v in zip(names, want, strict=True)))
    bare = tmp_path / "bare.csv"
    bare.write_text("".join(f"{n},{v}\n" for n, v in zip(names, want, strict=True)))
    videos = noise_video(3 * 8, 16, 16).reshape(3, 8, 16, 16, 3)
    # What `pyramid_dataset` and `prepare` resolve (`ds.class_names` is `class_names` here).
    for src in (sources.resolve_source(str(folder), str(with_header)),
                sources.resolve_source(str(folder), str(bare)),
                sources.resolve_source((videos, np.array(want)))):
        assert src.class_names == classes and src.labels.tolist() == want

    shards = tmp_path / "shards"
    assert run_cli("prepare", folder, shards, "--labels", with_header, "--shards", 1) == 0
    ds = data.pyramid_dataset(str(shards), SPEC, 3, labels=True, seed=0, shuffle=False,
                              repeat=False, return_offsets=True)
    assert ds.class_names == classes
    (batch,) = take(ds, 1)
    np.testing.assert_array_equal(batch["label"], np.take(want, batch["index"]))
    # Shards prepared before class names were stored for integer labels.
    meta_path = shards / "hpdm_shards.json"
    meta = json.loads(meta_path.read_text())
    meta["class_names"] = None
    meta_path.write_text(json.dumps(meta))
    assert shards_module.read_shard_source(str(shards), labels=True).class_names == classes


# ----------------------------------------------------------- 3: frame size limits
def test_degenerate_strips_refused_and_huge_frames_downscaled(tmp_path, monkeypatch):
    folder = tmp_path / "media"
    folder.mkdir()
    strip = str(folder / "strip.png")
    Image.fromarray(noise_video(1, 1, 8000)[0]).save(strip)  # 8000x1 pixels
    write_image(folder / "ok.png", smooth_video(1, 20, 16)[0])
    with pytest.raises(decode.MediaSizeError, match="strip.png: degenerate frame size 8000x1"):
        data.read_image(strip)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.pyramid_dataset(str(folder), SPEC, 1, seed=0, repeat=False)
        summary = data.prepare(str(folder), tmp_path / "shards", num_shards=1)
    ours = [str(w.message) for w in caught if w.category is data.SkippedMediaWarning]
    assert len(ours) == 2 and all("1 unsupported size" in m for m in ours), ours
    assert list(ds.skipped) == list(summary["skipped"]) == [strip]
    assert ds.skipped[strip].startswith("unsupported size: degenerate frame size 8000x1")
    assert len(take(ds, 5)) == 1 and summary["num_records"] == 1

    # Over the pixel budget: downscaled on decode, aspect ratio kept.
    ramp = (np.arange(4200) % 256).astype(np.uint8)
    big = np.empty((4200, 4200, 3), np.uint8)
    big[..., 0], big[..., 1], big[..., 2] = ramp[None, :], ramp[:, None], 128
    Image.fromarray(big).save(tmp_path / "big.jpg")
    assert data.read_image(tmp_path / "big.jpg").shape == (4096, 4096, 3)
    monkeypatch.setattr(decode, "MAX_PIXELS", 16 * 16)  # the same code, on small files
    image = write_image(tmp_path / "small.png", smooth_video(1, 16, 24)[0])
    assert data.read_image(image).shape == (13, 19, 3)
    video = write_video(tmp_path / "v.mkv", smooth_video(3, 16, 24))
    assert data.decode_video(video).shape == (3, 13, 19, 3)
    assert (data.probe_media(video)["height"], data.probe_media(video)["width"]) == (13, 19)


# ---------------------------------------------------------------- 4: damaged data
def test_damaged_shards_are_reported_by_name(tmp_path):
    videos = noise_video(6 * 8, 16, 16).reshape(6, 8, 16, 16, 3)
    out = tmp_path / "shards"
    data.prepare(videos, out, num_shards=2)
    first = str(out / "data-00000-of-00002.tfrecord")  # records 0, 2, 4
    size = os.path.getsize(first)
    flip_bytes(first, first, [size // 2])  # inside record 2: fails its CRC, same size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.pyramid_dataset(str(out), SPEC, 1, seed=0, shuffle=False, repeat=False,
                                  return_offsets=True)
        ids = sorted(int(b["index"][0]) for b in take(ds, 10))
    ours = [str(w.message) for w in caught if w.category is data.SkippedMediaWarning]
    assert len(ours) == 1 and first in ours[0], ours
    assert ids == [0, 1, 3, 5]
    assert ds.skipped == {first: "damaged shard: 1 of 3 records readable; the rest of "
                                 "the file is skipped"}
    report = data.verify_shards(str(out))
    assert not report["ok"] and report["readable"] == 4
    assert list(report["damaged_files"]) == [os.path.basename(first)]
    assert re.fullmatch(r"corrupted record at \d+", report["damaged_files"][
        os.path.basename(first)])
    with pytest.raises(ValueError, match=f"{first}: damaged shard \\(corrupted record"):
        data.read_records(str(out))

    # Every shard damaged: the next pass reads nothing. An error (with repeat=True, empty
    # passes would otherwise follow each other forever).
    second = str(out / "data-00001-of-00002.tfrecord")
    for shard in (first, second):
        flip_bytes(shard, shard, [0])
    with pytest.raises(tf.errors.OpError) as error:
        take(ds, 1)
    message = pipeline.data_error_message(error.value)
    assert message.startswith(f"keras_hpdm.data: a pass over the shards in {out} read no "
                              "usable record"), error.value
    assert f"{first}: damaged shard: 1 of 3" in message
    assert f"{second}: damaged shard: 0 of 3" in message

    meta = out / "hpdm_shards.json"
    raw = meta.read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF
    for damaged in (raw[: len(raw) // 2], bytes(flipped)):
        meta.write_bytes(damaged)
        for read in (lambda path: data.pyramid_dataset(path, SPEC, 1), data.verify_shards,
                     data.read_records):
            with pytest.raises(ValueError, match=f"{meta}: damaged shard index"):
                read(str(out))
    meta.write_bytes(raw)


def test_corrupt_real_media_reported_once_by_name(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    clip = data.builtin_clip_path("carphone")
    good = str(shutil.copy(clip, folder / "good.mp4"))
    frame = data.decode_video(clip, indices=[0])[0]
    Image.fromarray(frame).save(tmp_path / "frame.png")
    Image.fromarray(frame).save(tmp_path / "frame.jpg")
    # Cut short with its index in front: 16 of the header's 120 frames decode. Usable.
    cut = truncate_copy(faststart(clip, tmp_path / "fs.mp4"), folder / "cut.mp4", 0.18)
    size = os.path.getsize(clip)
    bad = [
        flip_bytes(clip, folder / "flipped_index.mp4", range(size - 1500, size, 97)),
        truncate_copy(clip, folder / "half.mp4", 0.5),  # its index was at the end
        truncate_copy(tmp_path / "frame.png", folder / "cut.png", 0.6),
        flip_bytes(tmp_path / "frame.png", folder / "flipped.png", [100, 2000]),
        flip_bytes(tmp_path / "frame.jpg", folder / "flipped.jpg", [0, 1]),
    ]
    (folder / "random.webm").write_bytes(np.random.default_rng(0).bytes(20000))
    bad.append(str(folder / "random.webm"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.pyramid_dataset(str(folder), SPEC, 4, seed=0, return_offsets=True)
        batches = take(ds, 10)
        summary = data.prepare(str(folder), tmp_path / "shards", num_shards=1, frame_stride=8)
    ours = [str(w.message) for w in caught if w.category is data.SkippedMediaWarning]
    # One warning per data set, at build time: no clip fails later while iterating.
    assert len(ours) == 2 and all("skipped 6 of 8 files" in m for m in ours), ours
    assert sorted(ds.skipped) == sorted(summary["skipped"]) == sorted(bad)
    assert not any("Traceback" in r for r in ds.skipped.values())
    assert {good, cut} == {p for p in data.find_media(folder) if p not in ds.skipped}
    indices = np.concatenate([b["index"] for b in batches])  # 0: cut.mp4, 1: good.mp4
    last_frames = np.concatenate([b["frame_indices"].max(axis=1) for b in batches])
    assert set(indices) == {0, 1} and last_frames[indices == 0].max() <= 15
    assert summary["num_records"] == 2
