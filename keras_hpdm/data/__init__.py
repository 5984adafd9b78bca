"""Data: video/image decoding, built-in offline data, shard preparation, tf.data pipeline.

```python
spec = keras_hpdm.PyramidSpec(patch_size=(4, 32, 32), num_levels=3)
keras_hpdm.data.prepare("videos/", "shards/", resize=spec.target_size[1:])  # decode once
ds = keras_hpdm.data.pyramid_dataset("shards/", spec, batch_size=8, seed=0)
model.fit(ds, steps_per_epoch=1000)
# Joint image + video training (images as still videos), 1:1 as the paper's T2V model:
ds = keras_hpdm.data.mixed_pyramid_dataset("shards/", "photos/", spec, 8, image_fraction=0.5)
```
"""

from keras_hpdm.data.builtin import builtin_clip_path, builtin_images, load_builtin
from keras_hpdm.data.decode import (
    MediaDecodeError,
    MediaSizeError,
    decode_video,
    probe_media,
    read_image,
)
from keras_hpdm.data.joint import mixed_pyramid_dataset
from keras_hpdm.data.moving_mnist import mnist_digits, moving_mnist
from keras_hpdm.data.moving_mnist_captions import captioned_moving_mnist, moving_mnist_caption
from keras_hpdm.data.pipeline import pyramid_dataset
from keras_hpdm.data.shard_writer import prepare
from keras_hpdm.data.shards import read_records, verify_shards
from keras_hpdm.data.skipped import SkippedMediaWarning
from keras_hpdm.data.sources import find_media

__all__ = [
    "MediaDecodeError",
    "MediaSizeError",
    "SkippedMediaWarning",
    "builtin_clip_path",
    "builtin_images",
    "captioned_moving_mnist",
    "decode_video",
    "find_media",
    "load_builtin",
    "mixed_pyramid_dataset",
    "mnist_digits",
    "moving_mnist",
    "moving_mnist_caption",
    "prepare",
    "probe_media",
    "pyramid_dataset",
    "read_image",
    "read_records",
    "verify_shards",
]
