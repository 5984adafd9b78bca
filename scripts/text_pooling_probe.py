"""How well a linear read-out of pooled prompt embeddings transfers to unseen wordings.

Encodes captioned Moving MNIST captions with the offline MiniLM encoder, trains a linear
classifier of one fact (the direction by default) on pooled embeddings of `"train"`
captions, and scores it on `"held_out"` and `"compass"` captions
(`keras_hpdm.data.moving_mnist_caption`). Two poolings, each the library's
`TextAttentionPooling`: with its queries frozen at zero (the mean of the tokens) and
trained. What the read-out cannot recover from unseen wordings, a diffusion model fed the
same pooled vector cannot follow either. Prints a table and writes JSON.

    python scripts/text_pooling_probe.py [--fact direction] [--json probe.json]
"""

import argparse
import json
import os
import sys

import keras
import numpy as np

from keras_hpdm.conditioning import MiniLMTextEncoder
from keras_hpdm.data.moving_mnist_captions import (
    DIRECTIONS,
    SPEEDS,
    moving_mnist_caption,
)
from keras_hpdm.layers import TextAttentionPooling

FACTS = {"digit": 10, "direction": len(DIRECTIONS), "speed": len(SPEEDS)}


def captions(phrasings, num, seed):
    """`num` random captions in `phrasings` and their facts `(num, 3)`."""
    rng = np.random.default_rng(seed)
    facts = np.stack([rng.integers(0, k, num) for k in FACTS.values()], axis=1)
    texts = [moving_mnist_caption(int(d), int(r), int(s), phrasings, int(rng.integers(2**62)))
             for d, r, s in facts]
    return texts, facts


def probe(train_tokens, train_labels, num_classes, attention, seed, steps, batch_size):
    """A pooling + linear classifier trained with Adam; returns the model."""
    keras.utils.set_random_seed(seed)
    pooling = TextAttentionPooling(num_heads=8, trainable=attention)
    inputs = keras.Input(train_tokens.shape[1:])
    model = keras.Model(inputs, keras.layers.Dense(num_classes)(pooling(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    epochs = max(1, steps * batch_size // len(train_tokens))
    model.fit(train_tokens, train_labels, batch_size=batch_size, epochs=epochs, verbose=0)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fact", choices=tuple(FACTS), default="direction")
    p.add_argument("--train", type=int, default=3000, help="training captions")
    p.add_argument("--test", type=int, default=800, help="captions per scored phrasing set")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (batch 128)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    column = list(FACTS).index(args.fact)
    encoder = MiniLMTextEncoder(sequence_length=24, cache_size=0)

    def encode(texts):
        return np.concatenate([encoder.encode(texts[i:i + 256])["embeddings"]
                               for i in range(0, len(texts), 256)])

    train_text, train_facts = captions("train", args.train, seed=0)
    train = encode(train_text)
    scored = {name: (encode(t), f[:, column]) for name, (t, f) in
              (("held_out", captions("held_out", args.test, seed=1)),
               ("compass", captions("compass", args.test, seed=2)))}
    rows = []
    for pooling in ("mean (frozen zero queries)", "attention (8 heads)"):
        for seed in args.seeds:
            model = probe(train, train_facts[:, column], FACTS[args.fact],
                          pooling.startswith("attention"), seed, args.steps, 128)
            row = {"pooling": pooling, "seed": seed, "train": float(
                np.mean(model.predict(train, verbose=0).argmax(-1) == train_facts[:, column]))}
            for name, (tokens, labels) in scored.items():
                row[name] = float(np.mean(model.predict(tokens, verbose=0).argmax(-1) == labels))
            rows.append(row)
    print(f"{args.fact} read linearly from pooled MiniLM embeddings ({args.train} train "
          f"captions, {args.test} per scored set, chance {1 / FACTS[args.fact]:.0%})")
    print(f"{'pooling':<28} {'seed':>4} {'train':>6} {'held_out':>9} {'compass':>8}")
    for r in rows:
        print(f"{r['pooling']:<28} {r['seed']:>4} {r['train']:>6.1%} {r['held_out']:>9.1%} "
              f"{r['compass']:>8.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"fact": args.fact, "backend": keras.config.backend(),
                       "command": "python scripts/text_pooling_probe.py "
                                  + " ".join(sys.argv[1:] if argv is None else argv),
                       "rows": rows}, f, indent=1)
        print(f"wrote {os.path.abspath(args.json)}")


if __name__ == "__main__":
    main()
