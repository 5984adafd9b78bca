"""Pillow bar charts (matplotlib is not a dependency)."""

import os


def bar_chart(path, title, labels, series, unit="", note=None):
    """Horizontal grouped bars with Pillow; returns `path`, or None without Pillow.

    `series`: {name: [value per label]} (None values are skipped); one colour per series.
    """
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return None
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    bar_h, gap, left, width = 18, 14, 230, 900
    group_h = bar_h * len(series) + gap
    height = 70 + group_h * len(labels) + 22 * len(series) + (24 if note else 0)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), title, fill="black", font=font)
    top = max((v for vals in series.values() for v in vals if v is not None), default=1.0)
    scale = (width - left - 120) / (top or 1.0)
    y = 40
    for i, label in enumerate(labels):
        draw.text((10, y + (group_h - gap) / 2 - 8), label, fill="black", font=small)
        for j, (_, values) in enumerate(series.items()):
            value = values[i]
            if value is not None:
                x1 = left + max(1, value * scale)
                draw.rectangle([left, y + j * bar_h, x1, y + (j + 1) * bar_h - 3],
                               fill=colours[j % len(colours)])
                draw.text((x1 + 5, y + j * bar_h + 1), f"{value:.3g}{unit}", fill="black",
                          font=small)
        y += group_h
    for j, name in enumerate(series):
        draw.rectangle([left, y + 4, left + 14, y + 16], fill=colours[j % len(colours)])
        draw.text((left + 20, y + 2), name, fill="black", font=small)
        y += 22
    if note:
        draw.text((10, y + 4), note, fill=(90, 90, 90), font=small)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    print(f"wrote {path}")
    return path
