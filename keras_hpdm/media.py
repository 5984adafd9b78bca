"""Writing videos (MP4 with PyAV, GIF with Pillow) and PNG contact sheets."""

import os

import numpy as np
from PIL import Image, ImageDraw


def _check_video(video, name="video"):
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] not in (1, 3) or video.dtype != np.uint8:
        raise ValueError(
            f"`{name}` must be a uint8 array (frames, height, width, 1 or 3), got "
            f"{video.dtype} {video.shape}."
        )
    return np.repeat(video, 3, -1) if video.shape[-1] == 1 else video


def write_mp4(path, video, fps=8):
    """Writes a uint8 `(T, H, W, 3)` video as H.264 MP4 (even sizes are padded)."""
    import av

    video = _check_video(video)
    t, h, w, _ = video.shape
    pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))  # yuv420p needs even sizes
    video = np.pad(video, pad, mode="edge")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_gif(path, video, fps=8, scale=1):
    """Writes a uint8 `(T, H, W, 3)` video as a looping GIF (optionally upscaled)."""
    video = _check_video(video)
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale),
                                        Image.NEAREST) for f in video]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                   duration=max(1, int(1000 / fps)))
    return path


def contact_sheet(videos, max_frames=8, pad=2, scale=1):
    """Tiles videos `(N, T, H, W, 3)` (rows) by frames (columns) into one uint8 image."""
    videos = np.asarray(videos)
    if videos.ndim == 4:
        videos = videos[None]
    videos = np.stack([_check_video(v, "videos") for v in videos])
    n, t, h, w, _ = videos.shape
    step = max(1, t // max_frames)
    columns = videos[:, ::step][:, :max_frames]
    cols = columns.shape[1]
    sheet = np.full((n * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        for j in range(cols):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[y:y + h, x:x + w] = columns[i, j]
    if scale > 1:
        sheet = np.repeat(np.repeat(sheet, scale, 0), scale, 1)
    return sheet


def save_png(path, image):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return path


LEVEL_COLORS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48)]


def pyramid_sheet(video, pyramid, offsets, frame=None):
    """A picture of a patch pyramid: the video's middle frame with every level's box drawn,
    and beside it each level's patch (first frame), upscaled to a common height.

    Args:
        video: uint8 `(F, H, W, 3)` at `pyramid.target_size`.
        pyramid: `PyramidSpec`.
        offsets: `(L, 3)` level offsets (from `pyramid.sample_offsets`).
        frame: which full-resolution frame to show (default: inside the finest patch).
    """
    video = _check_video(np.asarray(video))
    spec = pyramid
    patches = spec.extract(video, offsets)
    full = np.asarray(offsets[-1]) * np.asarray(spec.level_factor(spec.num_levels - 1))
    frame = int(full[0]) if frame is None else frame
    canvas = Image.fromarray(video[frame])
    draw = ImageDraw.Draw(canvas)
    for level in range(spec.num_levels):
        k = np.asarray(spec.level_factor(level))
        start = np.asarray(offsets[level]) * k
        size = np.asarray(spec.patch_size) * k
        box = [start[2], start[1], start[2] + size[2] - 1, start[1] + size[1] - 1]
        for inset in range(max(1, video.shape[1] // 128)):
            draw.rectangle([box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset],
                           outline=LEVEL_COLORS[level % len(LEVEL_COLORS)])
    height = video.shape[1]
    tiles = [np.asarray(canvas)]
    for level in range(spec.num_levels):
        patch = np.clip(np.round(patches[level, 0]), 0, 255).astype(np.uint8)
        img = Image.fromarray(patch).resize(
            (int(patch.shape[1] * height / patch.shape[0]), height), Image.NEAREST)
        bordered = Image.new("RGB", (img.width + 8, img.height + 8),
                             LEVEL_COLORS[level % len(LEVEL_COLORS)])
        bordered.paste(img, (4, 4))
        tiles.append(np.asarray(bordered.resize((img.width, height))))
    gap = np.full((height, 6, 3), 255, np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row += [gap, tile]
    return np.concatenate(row, axis=1)


VIDEO_FORMATS = ("mp4", "gif", "png")


def video_row(videos, pad=2):
    """Videos `(N, T, H, W, C)` side by side into one video `(T, H, N * (W + pad) - pad, 3)`."""
    videos = np.stack([_check_video(v, "videos") for v in np.asarray(videos)])
    n, t, h, w, _ = videos.shape
    row = np.full((t, h, n * (w + pad) - pad, 3), 255, np.uint8)
    for i in range(n):
        row[:, :, i * (w + pad):i * (w + pad) + w] = videos[i]
    return row


def save_videos(stem, videos, formats=VIDEO_FORMATS, fps=8, scale=None):
    """Writes a batch of uint8 videos `(N, T, H, W, C)` as `stem.mp4` / `stem.gif` (all
    samples side by side) and `stem.png` (a contact sheet: one row per sample).

    Small videos are upscaled (nearest) to at least 128 pixels high unless `scale` is given.
    Returns `{format: path}`.
    """
    unknown = set(formats) - set(VIDEO_FORMATS)
    if unknown:
        raise ValueError(f"`formats` must be among {VIDEO_FORMATS}, got {sorted(unknown)}.")
    videos = np.asarray(videos)
    if videos.ndim == 4:
        videos = videos[None]
    if scale is None:
        scale = max(1, -(-128 // videos.shape[2]))
    row = video_row(videos)
    big = np.repeat(np.repeat(row, scale, 1), scale, 2) if scale > 1 else row
    written = {}
    if "mp4" in formats:
        written["mp4"] = write_mp4(f"{stem}.mp4", big, fps=fps)
    if "gif" in formats:
        written["gif"] = write_gif(f"{stem}.gif", row, fps=fps, scale=scale)
    if "png" in formats:
        written["png"] = save_png(f"{stem}.png", contact_sheet(videos, scale=scale))
    return written


def levels_sheet(canvases, sample=0, frame=None, height=None):
    """The generated pyramid of one sample: each level's canvas (middle frame) upscaled to
    the finest level's height, left to right, coarse to fine, framed in its level colour.

    Args:
        canvases: list of per-level float arrays `(N, T_l, H_l, W_l, C)` in [-1, 1]
            (`generate(..., return_pyramid=True)`).
    """
    tiles = []
    height = height or max(c.shape[2] for c in canvases)
    for level, canvas in enumerate(canvases):
        video = np.clip(np.round((np.asarray(canvas[sample]) + 1.0) * 127.5), 0, 255)
        video = _check_video(video.astype(np.uint8))
        f = video.shape[0] // 2 if frame is None else min(frame, video.shape[0] - 1)
        img = Image.fromarray(video[f]).resize(
            (int(video.shape[2] * height / video.shape[1]), height), Image.NEAREST)
        bordered = Image.new("RGB", (img.width + 8, img.height + 8),
                             LEVEL_COLORS[level % len(LEVEL_COLORS)])
        bordered.paste(img, (4, 4))
        tiles.append(np.asarray(bordered))
    gap = np.full((height + 8, 6, 3), 255, np.uint8)
    row = [tiles[0]]
    for tile in tiles[1:]:
        row += [gap, tile]
    return np.concatenate(row, axis=1)


# Line colours of `plot_curves` (matplotlib's first five).
CURVE_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def plot_curves(path, steps, curves, title, ylabel="EDM loss"):
    """Line plot of `curves` (`{name: values}`, one value per step; a curve named `"loss"`
    drawn thicker) against `steps`, as a PNG at `path` (matplotlib when installed, else
    PIL). Returns `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_curves_with_pil(path, steps, curves, title, ylabel)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for (name, values), color in zip(curves.items(), CURVE_COLORS, strict=False):
        ax.plot(steps, values, label=name, color=color, lw=2 if name == "loss" else 1)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_curves_with_pil(path, steps, curves, title, ylabel="EDM loss", size=(700, 400),
                          margin=(60, 20, 30, 40)):
    left, right, top, bottom = margin
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = left, size[0] - right, top, size[1] - bottom
    values = np.concatenate([np.asarray(v, np.float64) for v in curves.values()])
    lo, hi = float(values.min()), float(values.max())
    hi = hi if hi > lo else lo + 1.0
    s_lo, s_hi = float(min(steps)), float(max(steps))
    s_hi = s_hi if s_hi > s_lo else s_lo + 1.0

    def xy(step, value):
        return (x0 + (step - s_lo) / (s_hi - s_lo) * (x1 - x0),
                y1 - (value - lo) / (hi - lo) * (y1 - y0))

    draw.rectangle([x0, y0, x1, y1], outline="black")
    for i in range(5):  # value ticks
        value = lo + (hi - lo) * i / 4
        y = xy(s_lo, value)[1]
        draw.line([x0 - 4, y, x0, y], fill="black")
        draw.text((4, y - 6), f"{value:.3f}", fill="black")
    for step in (s_lo, (s_lo + s_hi) / 2, s_hi):
        x = xy(step, lo)[0]
        draw.text((x - 10, y1 + 6), f"{step:.0f}", fill="black")
    draw.text((x0, 4), f"{title}   (x: step, y: {ylabel})", fill="black")
    for i, ((name, vals), color) in enumerate(zip(curves.items(), CURVE_COLORS, strict=False)):
        points = [xy(s, v) for s, v in zip(steps, vals, strict=True)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2 if name == "loss" else 1)
        else:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2,
                          points[0][1] + 2], fill=color)
        draw.text((x1 - 110, y0 + 6 + 14 * i), name, fill=color)
    image.save(path)
    return path
