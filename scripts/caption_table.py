"""Precomputes the caption embeddings `gpu_train_moving_mnist.py --text-table` trains on.

For each of the 160 facts of captioned Moving MNIST (10 digits x 8 directions x 2 speeds),
`--per-fact` captions in the training phrasings (`keras_hpdm.data.moving_mnist_caption`,
distinct where the phrasings allow), encoded by the offline MiniLM text encoder exactly as
`PatchDiffusionModel.fit` encodes captions. The held-out phrasings stay out: they are for
evaluation. Writes an `.npz`: `embeddings` float16 `(K, S, D)`, `captions` `(K,)`, `facts`
`(K, 3)` (digit, direction, speed) and `encoder` (the serialized encoder, JSON).

    python scripts/caption_table.py --out caption_table.npz [--per-fact 16]
        [--sequence-length 24]

16 captions per fact at 24 tokens: 2560 captions, 48 MB.
"""

import argparse
import json
import os
import sys

import keras
import numpy as np

from keras_hpdm.conditioning import MiniLMTextEncoder
from keras_hpdm.data.moving_mnist_captions import DIRECTIONS, SPEEDS, moving_mnist_caption


def caption_table(per_fact=16, sequence_length=24, seed=0, batch_size=64):
    """The table as a dict of arrays (see the module docstring)."""
    captions, facts = [], []
    rng = np.random.default_rng(seed)
    for digit in range(10):
        for direction in range(len(DIRECTIONS)):
            for speed in range(len(SPEEDS)):
                chosen = set()
                for _ in range(50 * per_fact):  # distinct captions, as far as they exist
                    chosen.add(moving_mnist_caption(digit, direction, speed, "train",
                                                    int(rng.integers(2**62))))
                    if len(chosen) == per_fact:
                        break
                captions += sorted(chosen)
                facts += [(digit, direction, speed)] * len(chosen)
    encoder = MiniLMTextEncoder(sequence_length=sequence_length, cache_size=0)
    embeddings = np.concatenate([
        np.asarray(encoder.encode(captions[i:i + batch_size])["embeddings"], np.float32)
        for i in range(0, len(captions), batch_size)])
    return {"embeddings": embeddings.astype(np.float16), "captions": np.array(captions),
            "facts": np.array(facts, np.int64),
            "encoder": json.dumps(keras.saving.serialize_keras_object(encoder))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--per-fact", type=int, default=16, help="captions per fact (default: 16)")
    p.add_argument("--sequence-length", type=int, default=24,
                   help="tokens per caption (default: 24)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    table = caption_table(args.per_fact, args.sequence_length, args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, **table)
    print(f"wrote {args.out}: {len(table['captions'])} captions, embeddings "
          f"{table['embeddings'].shape} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
