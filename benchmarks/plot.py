"""Line plots of the scaling curves as PNG, drawn with Pillow (no matplotlib)."""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

COLOURS = ["#c0392b", "#2471a3", "#229954", "#af7ac5"]


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def line_plots(path, panels, width=520, height=340):
    """panels: [(title, x label, {series: [(x, y_ms), ...]})], drawn side by side."""
    img = Image.new("RGB", (width * len(panels), height), "white")
    d = ImageDraw.Draw(img)
    font, small = _font(14), _font(11)
    for p, (title, xlabel, series) in enumerate(panels):
        ox, left, right, top, bottom = p * width, 60, 20, 40, 50
        pts = [pt for s in series.values() for pt in s]
        xmin, xmax = min(x for x, _ in pts), max(x for x, _ in pts)
        ymax = max(y for _, y in pts) * 1.1
        W, H = width - left - right, height - top - bottom

        def px(x, y):
            return ox + left + (x - xmin) / ((xmax - xmin) or 1) * W, top + H - y / ymax * H
        d.text((ox + left, 10), title, fill="black", font=font)
        d.line([ox + left, top, ox + left, top + H, ox + left + W, top + H], fill="black")
        for k in range(5):
            y = ymax * k / 4
            d.text((ox + 5, px(xmin, y)[1] - 6), f"{y:.0f}", fill="#444", font=small)
        for x in sorted({x for x, _ in pts}):
            d.text((px(x, 0)[0] - 10, top + H + 6), f"{x:g}", fill="#444", font=small)
        d.text((ox + left + W // 2 - 30, height - 22), xlabel, fill="black", font=small)
        d.text((ox + 5, top - 18), "ms", fill="#444", font=small)
        for i, (name, s) in enumerate(series.items()):
            c = COLOURS[i % len(COLOURS)]
            d.line([px(x, y) for x, y in sorted(s)], fill=c, width=2)
            for x, y in s:
                cx, cy = px(x, y)
                d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=c)
            d.text((ox + left + 10, top + 5 + 15 * i), name, fill=c, font=small)
    img.save(path)
    return path
