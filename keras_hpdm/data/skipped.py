"""Skipped media: the reason recorded per bad file, the one warning, the nothing-left error.

Data sets and `prepare` skip unusable files instead of failing a long run: each skip is
recorded as `path -> "kind: detail"` (`skip_reason`), reported with a single
`SkippedMediaWarning` per data set (`report_skipped`), and only a source with nothing usable
left raises (`raise_if_empty`).
"""

import warnings
from collections import Counter

from keras_hpdm.data import decode


class SkippedMediaWarning(UserWarning):
    """Some media files were unusable and were skipped (one summary per data set)."""


def skip_reason(error, path):
    """`"undecodable: ..."` or `"unsupported size: ..."` for a decode `error` on `path`."""
    message = str(error)
    prefix = f"{path}: "
    kind = "unsupported size" if isinstance(error, decode.MediaSizeError) else "undecodable"
    return f"{kind}: " + (message[len(prefix):] if message.startswith(prefix) else message)


def report_skipped(skipped, total, description, stacklevel=3):
    """Issues ONE `SkippedMediaWarning` summarising `skipped` (path -> reason), if any."""
    if not skipped:
        return
    kinds = Counter(reason.split(":", 1)[0] for reason in skipped.values())
    first = list(skipped.items())[:3]
    lines = "\n".join(f"  {p}: {r}" for p, r in first)
    more = f"\n  ... and {len(skipped) - len(first)} more" if len(skipped) > len(first) else ""
    counts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    warnings.warn(
        f"keras_hpdm.data: skipped {len(skipped)} of {total} files in {description} "
        f"({counts}); the rest are used. The full list is in the data set's `skipped` "
        f"attribute.\n{lines}{more}",
        SkippedMediaWarning,
        stacklevel=stacklevel,
    )


def raise_if_empty(count, skipped, description):
    if count == 0:
        reasons = Counter(r.split(":", 1)[0] for r in skipped.values())
        detail = ", ".join(f"{n} {k}" for k, n in sorted(reasons.items())) or "no files"
        first = next(iter(skipped.items()), None)
        example = f" First: {first[0]}: {first[1]}" if first else ""
        raise ValueError(f"No usable media in {description} ({detail}).{example}")
