"""Captioned Moving MNIST: each video described in words from its own facts.

A video holds one real MNIST digit moving in a straight line (one of 8 compass directions,
jittered by up to 10 degrees, at one of two speeds) that never reaches a wall, so the
direction in its caption holds from the first frame to the last and can be measured
(`keras_hpdm.metrics.measured_directions`). Captions say the digit, the direction and the
speed in words, in many phrasings: a text-conditional model must learn the meaning, not one
template. The `"held_out"` phrasings (their own digit, direction and speed wordings and
their own templates) never occur in `"train"` captions, to test that; `"compass"` ones are
the held-out phrasings with the direction in compass words ("travelling north-east"), a
test of the text encoder's knowledge more than of the model.
"""

import numpy as np

from keras_hpdm.checks import check_int, check_seed
from keras_hpdm.data.moving_mnist import DIGIT, _load_mnist, pool_indices, render_digits

# Direction names and their unit vectors (row, column): rows grow downwards.
DIRECTIONS = ("up", "up-right", "right", "down-right", "down", "down-left", "left", "up-left")
_ANGLES = np.deg2rad(np.arange(8) * 45.0)  # clockwise from up, in DIRECTIONS' order
SPEEDS = ("slow", "fast")
# A speed is the fraction of the free room (canvas - digit) crossed over the clip, so no
# video reaches a wall whatever its length.
_SPEED_FRACTIONS = {"slow": 0.4, "fast": 0.8}
_JITTER = np.deg2rad(10.0)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine")
PHRASINGS = ("train", "held_out", "compass")

_DIGIT_PHRASES = {
    "train": ("the digit {d}", "a {d}", "the number {w}", "a handwritten {d}", "digit {w}",
              "the number {d}", "a {w}"),
    "held_out": ("the numeral {d}", "a hand-drawn {w}", "a single handwritten numeral {d}"),
}


def _diagonals(phrases):
    """The four diagonal directions' phrases from `phrases(vertical, horizontal)`."""
    return {f"{v}-{h}": phrases(v, h) for v in ("up", "down") for h in ("left", "right")}


_TOP = {"up": "top", "down": "bottom"}
_UPPER = {"up": "upper", "down": "lower"}
# Many wordings per direction, so that a model learns what the words mean rather than a
# few token patterns (`scripts/text_pooling_probe.py` measures how far a read-out of the
# direction trained on these carries to the held-out wordings).
_DIRECTION_PHRASES = {
    "train": {
        "up": ("moving up", "going upwards", "heading to the top", "climbing", "ascending",
               "floating up", "moving towards the top of the frame", "gliding upward",
               "moving to the top border"),
        "down": ("moving down", "going downwards", "heading to the bottom", "falling",
                 "descending", "dropping down", "moving towards the bottom of the frame",
                 "gliding downward", "moving to the bottom border"),
        "left": ("moving left", "going to the left", "heading leftwards", "sliding left",
                 "moving leftward", "moving towards the left side of the frame",
                 "gliding to the left", "moving to the left border", "shifting left"),
        "right": ("moving right", "going to the right", "heading rightwards", "sliding right",
                  "moving rightward", "moving towards the right side of the frame",
                  "gliding to the right", "moving to the right border", "shifting right"),
        **_diagonals(lambda v, h: (
            f"moving {v} and to the {h}", f"going {v}-{h}", f"heading to the {_TOP[v]} {h}",
            f"{'climbing' if v == 'up' else 'falling'} to the {h}",
            f"{'ascending' if v == 'up' else 'descending'} {h}ward",
            f"moving towards the {_TOP[v]} {h} of the frame",
            f"gliding diagonally {v} and {h}", f"moving to the {_TOP[v]}-{h} corner",
            f"{'floating' if v == 'up' else 'dropping'} {v} and {h}")),
    },
    "held_out": {
        "up": ("rising towards the upper edge", "drifting upward",
               "travelling to the top of the picture"),
        "down": ("sinking towards the lower edge", "drifting downward",
                 "travelling to the bottom of the picture"),
        "left": ("drifting towards the left edge", "travelling leftward",
                 "making its way to the left of the picture"),
        "right": ("drifting towards the right edge", "travelling rightward",
                  "making its way to the right of the picture"),
        **_diagonals(lambda v, h: (
            f"{'rising' if v == 'up' else 'sinking'} towards the {_UPPER[v]} {h} corner",
            f"drifting {v} and to the {h}", f"travelling to the {_TOP[v]} {h} of the picture")),
    },
    # Compass words, a leap that MiniLM's embeddings do not make (north is not read as
    # up): scored apart from the paraphrases. Digit, speed and templates as `"held_out"`.
    "compass": {direction: (f"travelling {point}", f"heading {point}")
                for direction, point in zip(DIRECTIONS, (
                    "north", "north-east", "east", "south-east", "south", "south-west",
                    "west", "north-west"), strict=True)},
}
_SPEED_PHRASES = {
    "train": {"slow": ("slowly", "at a slow pace", "gently"),
              "fast": ("quickly", "fast", "at high speed")},
    "held_out": {"slow": ("unhurriedly", "at a leisurely pace"),
                 "fast": ("rapidly", "at a brisk pace")},
}
_TEMPLATES = {
    "train": ("{digit} {direction} {speed}", "{digit} {speed} {direction}",
              "a video of {digit} {direction} {speed}", "{digit}, {direction}, {speed}"),
    "held_out": ("footage showing {digit} {direction} {speed}",
                 "here {digit} is {direction} {speed}"),
}


def _check_phrasings(phrasings):
    if phrasings not in PHRASINGS:
        raise ValueError(f"`phrasings` must be one of {PHRASINGS}, got {phrasings!r}.")
    return phrasings


def moving_mnist_caption(digit, direction, speed, phrasings="train", seed=0):
    """One caption for the facts: e.g. `"The digit 7 moving up and to the right quickly"`.

    Args:
        digit: int in [0, 9].
        direction: one of `DIRECTIONS` (or its index).
        speed: `"slow"` / `"fast"` (or its index).
        phrasings: `"train"`, `"held_out"` or `"compass"` wordings (see the module
            docstring; no train wording occurs in the others).
        seed: picks the wording.

    Returns:
        str.

    Example:
    ```python
    keras_hpdm.data.moving_mnist_caption(7, "up-right", "fast", phrasings="held_out")
    ```
    """
    digit = check_int("digit", digit, low=0, high=9)
    direction = _name("direction", direction, DIRECTIONS)
    speed = _name("speed", speed, SPEEDS)
    phrasings = _check_phrasings(phrasings)
    rng = np.random.default_rng(check_seed(seed, allow_none=False))

    def pick(options):
        return options[rng.integers(len(options))]

    other = "held_out" if phrasings == "compass" else phrasings  # only the direction differs
    text = pick(_TEMPLATES[other]).format(
        digit=pick(_DIGIT_PHRASES[other]).format(d=digit, w=NUMBER_WORDS[digit]),
        direction=pick(_DIRECTION_PHRASES[phrasings][direction]),
        speed=pick(_SPEED_PHRASES[other][speed]))
    return text[0].upper() + text[1:]


def _name(what, value, names):
    if isinstance(value, str):
        if value not in names:
            raise ValueError(f"`{what}` must be one of {names}, got {value!r}.")
        return value
    return names[check_int(what, value, low=0, high=len(names) - 1)]


def captioned_moving_mnist(num_videos, num_frames=16, size=64, seed=0, phrasings="train",
                           digit_indices=None):
    """Moving MNIST videos with captions made from each video's own facts.

    Args:
        num_videos: number of videos `N`.
        num_frames: frames per video `T` (>= 2).
        size: canvas side in pixels (>= 32: room to move).
        seed: non-negative int; the same seed gives the same videos and captions.
        phrasings: `"train"`, `"held_out"` or `"compass"` wordings (see the module
            docstring).
        digit_indices: indices of the digits (among the 5000) to draw from (default all).

    Returns:
        `(videos, captions, facts)`: uint8 `(N, T, size, size, 1)`, a list of N str, and
        a dict of int64 `(N,)` arrays `digit`, `direction` (index into `DIRECTIONS`) and
        `speed` (index into `SPEEDS`).

    Example:
    ```python
    videos, captions, facts = keras_hpdm.data.captioned_moving_mnist(64, seed=0)
    ds = keras_hpdm.data.pyramid_dataset(videos, spec, 8, labels=captions)
    ```
    """
    n = check_int("num_videos", num_videos, low=1)
    t = check_int("num_frames", num_frames, low=2)
    size = check_int("size", size, low=DIGIT + 4)
    seed = check_seed(seed, allow_none=False)
    phrasings = _check_phrasings(phrasings)
    glyphs, classes = _load_mnist()
    pool = pool_indices(digit_indices, len(glyphs))
    rng = np.random.default_rng(seed)
    choice = pool[rng.integers(0, len(pool), n)]
    direction = rng.integers(0, len(DIRECTIONS), n)
    speed = rng.integers(0, len(SPEEDS), n)
    room = size - DIGIT
    angle = _ANGLES[direction] + rng.uniform(-_JITTER, _JITTER, n)
    step = np.array([_SPEED_FRACTIONS[s] for s in SPEEDS])[speed] * room / (t - 1)
    vel = step[:, None] * np.stack([-np.cos(angle), np.sin(angle)], axis=-1)  # (row, col)
    # Start where the whole straight path stays inside the canvas.
    travel = vel * (t - 1)
    low = np.maximum(0.0, -travel)
    pos = low + rng.uniform(0, 1, (n, 2)) * (room - np.abs(travel))
    videos = render_digits(glyphs[choice][:, None], pos[:, None], vel[:, None], t, size)
    digits = classes[choice].astype(np.int64)
    seeds = rng.integers(0, 2**62, n)
    captions = [moving_mnist_caption(int(d), int(r), int(s), phrasings, int(c))
                for d, r, s, c in zip(digits, direction, speed, seeds, strict=True)]
    facts = {"digit": digits, "direction": direction.astype(np.int64),
             "speed": speed.astype(np.int64)}
    return videos[..., None], captions, facts
