"""Statistics, tables and the one `report` every benchmark script ends with."""

import json
import os
import statistics

from machine import machine_info
from plots import bar_chart

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ------------------------------------------------------------------------ statistics
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def fmt(value, spec=".2f", none="-"):
    return none if value is None else format(value, spec)


# ---------------------------------------------------------------------------- tables
def text_table(columns, rows):
    """`columns`: (header, key or callable, format spec). Returns an aligned text table."""
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        cells.append([_cell(row, key, spec) for _, key, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(columns, rows):
    out = ["| " + " | ".join(h for h, _, _ in columns) + " |",
           "|" + "|".join(":---" if spec is None else "---:" for _, _, spec in columns) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_cell(row, key, spec) for _, key, spec in columns) + " |")
    return "\n".join(out)


def _cell(row, key, spec):
    value = key(row) if callable(key) else row.get(key)
    if value is None:
        return "-"
    if isinstance(value, str) or spec is None:
        return str(value)
    return format(value, spec)


def write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- report
def report(name, columns, rows, meta, *, title=None, failed=None, notes=(), out=RESULTS,
           path=None, markdown=None, chart=None):
    """The tail of every benchmark script: prints the results, then writes them.

    Prints `title`, the text table of `columns` (see `text_table`) over the `rows` without an
    `"error"` key, a `"<failed(row)> FAILED: <last line of its error>"` line for each row with
    one, and the `notes` lines. Then writes `meta` as JSON to `path` (default
    `<out>/<name>.json`), with `machine_info()` under `"machine"` unless `meta` has that key,
    `markdown` (text) beside it as `.md`, and `chart` (keyword arguments of
    `plots.bar_chart`: title, labels, series, unit, note) as `.png`. Returns the JSON path.
    """
    if title is not None:
        print(title)
    print(text_table(columns, [r for r in rows if "error" not in r]))
    for r in rows:
        if "error" in r:
            label = failed(r) if failed else name
            print(f"{label} FAILED: {r['error'].splitlines()[-1]}")
    for line in notes:
        print(line)
    path = path or os.path.join(out, f"{name}.json")
    stem = os.path.splitext(path)[0]
    if "machine" not in meta:
        meta = dict(meta, machine=machine_info())
    write_json(path, meta)
    if markdown is not None:
        with open(stem + ".md", "w") as f:
            f.write(markdown)
        print(f"wrote {stem}.md")
    if chart is not None:
        bar_chart(stem + ".png", **chart)
    return path
