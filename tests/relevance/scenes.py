"""A small generator of synthetic scenes (coloured shapes on varied backgrounds) with captions.

Stands in for the demo's generated website while developing: pages of several images, each with
a caption like "a small red triangle left of a large blue circle", and planted mismatches whose
caption belongs to another image.
"""
from __future__ import annotations

import hashlib
import io
import math
import random

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 20),
    "purple": (140, 40, 170), "orange": (250, 140, 10), "black": (15, 15, 15), "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "ring")
BACKGROUNDS = ("grey", "beige", "sky", "dark", "pink")
PATTERNS = ("plain", "stripes", "checks")
BG_RGB = {"grey": (128, 128, 128), "beige": (225, 210, 180), "sky": (170, 205, 235),
          "dark": (50, 50, 70), "pink": (240, 190, 200)}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(3, int(r / 3)))
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    else:  # five-pointed star
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)


def render_scene(rng: random.Random, size: int = 160) -> tuple[bytes, str]:
    """One JPEG scene of 1-2 shapes and its caption (``size`` is the height; widths vary)."""
    bg = rng.choice(BACKGROUNDS)
    base = BG_RGB[bg]
    width = int(size * rng.uniform(1.0, 1.4))
    img = Image.new("RGB", (width, size), base)
    draw = ImageDraw.Draw(img)
    pattern = rng.choice(PATTERNS)
    shade = tuple(max(0, c - 30) for c in base)
    for k in range(0, max(width, size), 14):  # stripes or checks in a darker shade of the background
        if pattern == "stripes":
            draw.rectangle([0, k, width, k + 6], fill=shade)
        elif pattern == "checks":
            for j in range(0, size, 14):
                if (k // 14 + j // 14) % 2:
                    draw.rectangle([k, j, k + 13, j + 13], fill=shade)
    for _ in range(rng.randint(0, 6)):  # background clutter: faint blobs of the background's tint
        x, y, r = rng.uniform(0, width), rng.uniform(0, size), rng.uniform(5, 30)
        tint = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in base)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tint)
    n = rng.choice((1, 2, 2))
    objects = []
    for i in range(n):
        colour = rng.choice([c for c in COLOURS if c not in {o[1] for o in objects}])
        shape = rng.choice(SHAPES)
        big = rng.random() < 0.5
        r = size * (rng.uniform(0.2, 0.27) if big else rng.uniform(0.1, 0.14))
        # two objects go to the two halves (left/right or top/bottom) so the relation is visible
        cx = width * (0.28 + 0.44 * i if n == 2 else rng.uniform(0.35, 0.65))
        cy = size * rng.uniform(0.3, 0.7)
        objects.append(("large" if big else "small", colour, shape, cx, cy))
        _draw_shape(draw, shape, cx, cy, r, COLOURS[colour])
    phrase = [f"a {s} {c} {sh}" for s, c, sh, _, _ in objects]
    if n == 1:
        caption = f"{phrase[0]} on a {bg} background"
    else:
        caption = f"{phrase[0]} left of {phrase[1]}"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88)
    return buf.getvalue(), caption


def make_pairs(n_pages: int, images_per_page: int = 4, mismatch_rate: float = 0.15, seed: int = 0,
               size: int = 160) -> list[dict]:
    """Pairs-schema rows plus ``is_match``; a ``mismatch_rate`` share carries another image's caption."""
    rng = random.Random(seed)
    scenes = []
    for p in range(n_pages):
        for k in range(images_per_page):
            data, caption = render_scene(rng, size)
            scenes.append((f"https://site.test/page{seed}-{p}.html", data, caption))
    rows = []
    for i, (page_url, data, caption) in enumerate(scenes):
        width, height = Image.open(io.BytesIO(data)).size
        is_match = rng.random() >= mismatch_rate
        if not is_match:
            other = rng.choice([s for s in scenes if s[2] != caption])
            caption = other[2]
        image_id = hashlib.sha256(data).hexdigest()
        rows.append({
            "pair_id": f"pair-{seed}-{i}", "candidate_id": f"cand-{seed}-{i}", "image_id": image_id,
            "caption": caption, "text_source": "alt", "lang": "en", "width": width, "height": height,
            "image_bytes": data, "page_url": page_url, "image_url": f"https://site.test/img/{seed}-{i}.jpg",
            "is_match": is_match,
        })
    return rows
