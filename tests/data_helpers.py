"""Helpers the data tests share: media files written on the fly, the pyramid they cut, and
the marker that runs a pure tf.data/NumPy test once (under TensorFlow)."""

import os

import av
import keras
import numpy as np
import pytest
from PIL import Image

from keras_hpdm import PyramidSpec

tensorflow_only = pytest.mark.skipif(
    keras.config.backend() != "tensorflow",
    reason="pure tf.data/NumPy, backend-independent: runs under the TensorFlow backend",
)

SPEC = PyramidSpec((2, 4, 4), 3)  # target (8, 16, 16)


def take(ds, n):
    """The first `n` batches of a `tf.data` data set as dicts of numpy arrays."""
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


CODECS = {  # extension -> (codec, pixel format); ffv1/bgr0 is lossless RGB.
    ".mkv": ("ffv1", "bgr0"),
    ".mp4": ("libx264", "yuv420p"),
    ".avi": ("mpeg4", "yuv420p"),
    ".webm": ("libvpx", "yuv420p"),
}


def write_video(path, frames, fps=30, gop=None, b_frames=None):
    """Writes uint8 `(T, H, W, 3)` frames with the codec the extension implies."""
    if str(path).endswith(".gif"):  # Pillow: an adaptive palette per frame.
        images = [Image.fromarray(f) for f in frames]
        images[0].save(str(path), save_all=True, append_images=images[1:],
                       duration=int(1000 / fps), loop=0)
        return str(path)
    codec, pix_fmt = CODECS[os.path.splitext(path)[1]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if b_frames is not None:
            stream.codec_context.max_b_frames = b_frames
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def smooth_video(num_frames, height, width, seed=0):
    """A compressible moving pattern (lossy codecs keep it recognisable)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    phase = rng.uniform(0, 2 * np.pi, 3)
    frames = [
        np.stack([127.5 + 100 * np.sin((x + 3 * t) / 8 + phase[c] + y / 11) for c in range(3)], -1)
        for t in range(num_frames)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def noise_video(num_frames, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), np.uint8)


def write_image(path, array):
    Image.fromarray(array.squeeze()).save(str(path))
    return str(path)
