"""`keras-hpdm prepare`: decode a data set once into TFRecord shards for fast training."""

from keras_hpdm.cli.common import non_negative_int, positive_int


def add_parser(sub):
    p = sub.add_parser(
        "prepare", help="decode videos/images once into sharded TFRecords",
        description="Decode a folder of videos/images (or built-in data) once and write "
        "sharded TFRecords (PNG or JPEG frames) plus hpdm_shards.json; `keras-hpdm train "
        "SHARDS` and `pyramid_dataset(SHARDS, ...)` then read them in the graph. Unreadable "
        "files are reported and skipped.",
        epilog="example:\n  keras-hpdm prepare videos/ shards/ --resize 128 128 --frames 64 "
        "--labels auto",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="folder, media file or builtin:NAME")
    p.add_argument("output", help="output folder for the shards")
    p.add_argument("--shards", type=positive_int, default=8, help="shard files (default: 8)")
    p.add_argument("--format", choices=("png", "jpeg"), default="png",
                   help="frame encoding (default: png, lossless)")
    p.add_argument("--resize", type=positive_int, nargs="+", metavar="SIZE",
                   help="short side, or H W to cover (default: keep)")
    p.add_argument("--frames", type=positive_int,
                   help="split videos into chunks of this many frames (default: whole)")
    p.add_argument("--frame-stride", type=positive_int, default=1, help="default: 1")
    p.add_argument("--labels", default="none",
                   help="none, auto (sub-folders / built-in classes) or a CSV/JSON file of "
                        "labels or captions (default: none)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="convert to 1 or 3 channels")
    p.add_argument("--jpeg-quality", type=positive_int, default=95, help="default: 95")
    p.add_argument("--workers", type=non_negative_int, help="decode threads (default: CPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards")
    p.set_defaults(func=run)
    return p


def run(args):
    from keras_hpdm.cli.common import CommandError
    from keras_hpdm.data import prepare

    if args.resize is not None and len(args.resize) > 2:
        raise CommandError(f"--resize takes SIZE or H W, got {len(args.resize)} numbers.")
    resize = None if args.resize is None else (
        args.resize[0] if len(args.resize) == 1 else tuple(args.resize))
    labels = {"none": None, "auto": True}.get(args.labels, args.labels)
    summary = prepare(args.source, args.output, num_shards=args.shards,
                      image_format=args.format, frames=args.frames, resize=resize,
                      labels=labels, frame_stride=args.frame_stride, channels=args.channels,
                      jpeg_quality=args.jpeg_quality, num_workers=args.workers or None,
                      overwrite=args.overwrite)
    print(f"wrote {summary['num_records']} records ({summary['num_frames']} frames, "
          f"{summary['bytes'] / 1e6:.1f} MB) in {summary['num_shards']} shards to "
          f"{summary['output_dir']} in {summary['seconds']:.1f} s; skipped "
          f"{summary['num_skipped']} file(s)")
    for path, reason in summary["skipped"].items():
        print(f"  skipped {path}: {reason}")
    return 0
