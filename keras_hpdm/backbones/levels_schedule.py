"""Adaptive computation: how many pyramid levels each backbone block runs."""

import math

from keras_hpdm.checks import check_int


def linear_levels_per_block(num_blocks, num_levels):
    """The paper's allocation: levels grow linearly with block index, last block runs all.

    `linear_levels_per_block(6, 3) == (1, 1, 2, 2, 3, 3)`.
    """
    num_blocks = check_int("num_blocks", num_blocks, low=1)
    num_levels = check_int("num_levels", num_levels, low=1)
    return tuple(math.ceil((b + 1) * num_levels / num_blocks) for b in range(num_blocks))


def resolve_levels_per_block(levels_per_block, num_blocks, num_levels):
    """Validates a schedule; `None` runs every level in every block, "linear" = the paper's.

    Returns:
        A tuple of `num_blocks` ints, non-decreasing, each in `[1, num_levels]`, last equal
        to `num_levels`.
    """
    if levels_per_block is None:
        return (num_levels,) * num_blocks
    if isinstance(levels_per_block, str):
        if levels_per_block != "linear":
            raise ValueError(
                '`levels_per_block` must be None, "linear" or a sequence of ints, got '
                f"{levels_per_block!r}."
            )
        return linear_levels_per_block(num_blocks, num_levels)
    schedule = tuple(levels_per_block)
    if len(schedule) != num_blocks:
        raise ValueError(
            f"`levels_per_block` must have one entry per block ({num_blocks}), got "
            f"{len(schedule)}: {schedule}."
        )
    for i, n in enumerate(schedule):
        check_int(f"levels_per_block[{i}]", n, low=1, high=num_levels)
    if any(a > b for a, b in zip(schedule, schedule[1:], strict=False)):
        raise ValueError(f"`levels_per_block` must be non-decreasing, got {schedule}.")
    if schedule[-1] != num_levels:
        raise ValueError(
            f"The last block must run all {num_levels} levels (`levels_per_block[-1] == "
            f"{num_levels}`), got {schedule}."
        )
    return tuple(int(n) for n in schedule)
