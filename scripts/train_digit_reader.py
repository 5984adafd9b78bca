"""Trains the Moving MNIST judge (`keras_hpdm.metrics.DigitReader`) and writes its weights.

Usage: KERAS_BACKEND=jax python scripts/train_digit_reader.py [--out PATH]
Prints the held-out accuracy (1000 real digits never seen in training).
"""

import argparse

from keras_hpdm.metrics.digit_reader import WEIGHTS_PATH, DigitReader


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=WEIGHTS_PATH, help="default: the packaged weights")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    reader, accuracy = DigitReader.train(epochs=args.epochs, seed=args.seed, verbose=2)
    reader.save(args.out)
    print(f"held-out accuracy {accuracy:.4f} (1000 digits); weights written to {args.out}")


if __name__ == "__main__":
    main()
