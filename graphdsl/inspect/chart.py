"""A horizontal bar chart PNG drawn with Pillow (a runtime dependency), so no matplotlib is needed."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .drawing import kind_colour, op_kind


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def bar_chart(path, labels: list[str], values: list[float], *, title: str = "", unit: str = "",
              width: int = 900) -> Path:
    """Bars largest first as given; each bar coloured by op kind when its label is an op name."""
    path = Path(path)
    font, small, big = _font(13), _font(11), _font(15)
    row, pad, top = 22, 12, 40 if title else 12
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([probe.textlength(s, font=font) for s in labels] + [40])
    label_w = int(min(label_w, width * 0.45)) + 2 * pad
    height = top + row * max(len(labels), 1) + pad + 18
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((pad, 12), title, fill="black", font=big)
    vmax = max(values, default=0) or 1.0
    bar_w = width - label_w - 2 * pad - 90
    for k, (lab, v) in enumerate(zip(labels, values)):
        y = top + k * row
        text = lab if probe.textlength(lab, font=font) <= label_w - pad else _clip(probe, lab, font, label_w - pad)
        d.text((pad, y + 3), text, fill="black", font=font)
        kind = op_kind(lab.lower())
        colour = kind_colour(kind) if kind != "other" else "#9fc5e8"
        x1 = label_w + int(bar_w * v / vmax)
        d.rectangle([label_w, y + 2, max(x1, label_w + 1), y + row - 4], fill=colour, outline="#555555")
        d.text((x1 + 6, y + 4), f"{v:.3g} {unit}".strip(), fill="#333333", font=small)
    d.line([label_w, top, label_w, top + row * len(labels)], fill="#555555")
    img.save(path, format="PNG")
    return path


def _clip(probe, s: str, font, w: float) -> str:
    while s and probe.textlength("…" + s, font=font) > w:
        s = s[1:]
    return "…" + s
