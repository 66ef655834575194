"""Deterministic synthetic scenes: shapes of known classes, colours, sizes and boxes, with captions.

A scene is a small picture of one to three shapes on a varied background. Everything about it is
known: each shape's class, colour, size word and pixel box, so captions are true by construction
("a small red triangle left of a large blue circle") and the demo detector has exact ground truth.
The same seed always gives the same scenes, pixels and captions.
"""
from __future__ import annotations

import hashlib
import io
import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Object classes of the demo detector, in label order (label 0 = "circle").
CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")

#: Shape colours: saturated, so they stand out on the muted backgrounds below.
COLOURS = {
    "red": (220, 30, 40),
    "green": (30, 160, 60),
    "blue": (30, 70, 210),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}

#: Background styles, each muted so that every shape colour keeps its contrast.
BACKGROUNDS = ("plain", "gradient", "stripes", "noise", "checker")

SIZE_WORDS = ("small", "large")
# Object side as a fraction of the scene's short side, per size word.
SIZE_RANGES = {"small": (0.22, 0.32), "large": (0.42, 0.55)}

SCENE_MIN_SIDE = 160
SCENE_MAX_SIDE = 256


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene: its class, colour, size word and box in pixels (x1, y1, x2, y2)."""

    shape: str
    colour: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def label(self) -> int:
        """The 0-based class label (index in ``CLASSES``)."""
        return CLASSES.index(self.shape)

    @property
    def centre(self) -> tuple[float, float]:
        """The box centre (x, y)."""
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    def phrase(self) -> str:
        """The noun phrase that names this object, e.g. ``small red triangle``."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A full scene description; ``render`` turns it into pixels."""

    scene_id: str
    width: int
    height: int
    background: str
    bg_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    objects: tuple[SceneObject, ...]
    texture_seed: int = 0
    extras: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def boxes(self) -> np.ndarray:
        """float32 [n, 4] boxes, x1 y1 x2 y2 in pixels."""
        return np.array([o.box for o in self.objects], dtype=np.float32).reshape(-1, 4)

    @property
    def labels(self) -> np.ndarray:
        """int64 [n] 0-based class labels."""
        return np.array([o.label for o in self.objects], dtype=np.int64)


def _muted(rng: random.Random) -> tuple[int, int, int]:
    """A desaturated mid-tone background colour."""
    base = rng.randint(110, 190)
    return tuple(min(255, max(0, base + rng.randint(-25, 25))) for _ in range(3))


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller else 0.0


def make_scene(rng: random.Random, scene_id: str, num_objects: int | None = None) -> Scene:
    """Draw a random scene description from ``rng`` (deterministic for a seeded generator)."""
    width = rng.randrange(SCENE_MIN_SIDE, SCENE_MAX_SIDE + 1, 8)
    height = rng.randrange(SCENE_MIN_SIDE, SCENE_MAX_SIDE + 1, 8)
    # Keep scenes within aspect 1.5 so that they pass any reasonable aspect filter.
    height = max(int(width / 1.5), min(height, int(width * 1.5)))
    n = num_objects if num_objects is not None else rng.choice((1, 2, 2, 2, 3))
    short = min(width, height)
    objects: list[SceneObject] = []
    used_kinds: set[tuple[str, str]] = set()
    for _ in range(n):
        for _attempt in range(60):
            shape = rng.choice(CLASSES)
            colour = rng.choice(list(COLOURS))
            size = rng.choice(SIZE_WORDS)
            if (shape, colour) in used_kinds:
                continue
            side = int(short * rng.uniform(*SIZE_RANGES[size]))
            x1 = rng.randint(2, width - side - 2)
            y1 = rng.randint(2, height - side - 2)
            box = (x1, y1, x1 + side, y1 + side)
            if all(_overlap(box, other.box) < 0.15 for other in objects):
                objects.append(SceneObject(shape, colour, size, box))
                used_kinds.add((shape, colour))
                break
    background = rng.choice(BACKGROUNDS)
    return Scene(scene_id, width, height, background, (_muted(rng), _muted(rng)), tuple(objects),
                 texture_seed=rng.randrange(2**31))


def _background(scene: Scene) -> Image.Image:
    w, h = scene.width, scene.height
    c1, c2 = (np.array(c, dtype=np.float32) for c in scene.bg_colours)
    if scene.background == "gradient":
        t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        arr = np.broadcast_to(c1 * (1 - t) + c2 * t, (h, w, 3))
    elif scene.background == "stripes":
        band = (np.arange(h) // 12 % 2).astype(np.float32)[:, None, None]
        arr = np.broadcast_to(c1 * (1 - band) + c2 * band, (h, w, 3))
    elif scene.background == "checker":
        yy, xx = np.mgrid[0:h, 0:w]
        cell = (((yy // 16) + (xx // 16)) % 2).astype(np.float32)[..., None]
        arr = c1 * (1 - cell) + c2 * cell
    elif scene.background == "noise":
        noise = np.random.default_rng(scene.texture_seed).normal(0, 14, (h, w, 1)).astype(np.float32)
        arr = c1 + noise
    else:
        arr = np.broadcast_to(c1, (h, w, 3))
    # A smooth random light field, different in every scene: it gives each image its own
    # low-frequency signature, so that perceptual hashes (near-duplicate detection) tell scenes apart.
    rng = np.random.default_rng(scene.texture_seed + 1)
    xs = np.arange(w, dtype=np.float32) / w
    ys = np.arange(h, dtype=np.float32)[:, None] / h
    light = np.zeros((h, w), np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(-2.0, 2.0, 2)
        amplitude, phase = rng.uniform(10, 20), rng.uniform(0, 2 * np.pi)
        # cos(a + b) = cos a cos b - sin a sin b: two outer products instead of a full-grid cosine.
        a, b = 2 * np.pi * fx * xs + phase, 2 * np.pi * fy * ys
        light += amplitude * (np.cos(b) * np.cos(a) - np.sin(b) * np.sin(a))
    return Image.fromarray(np.clip(arr + light[..., None], 0, 255).astype(np.uint8), "RGB")


def _star(box, points=5, inner=0.45):
    x1, y1, x2, y2 = box
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    pts = []
    for i in range(points * 2):
        radius = r if i % 2 == 0 else r * inner
        angle = math.pi * i / points - math.pi / 2
        pts.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return pts


def _heart(box, steps=48):
    x1, y1, x2, y2 = box
    # The classic parametric heart spans x in [-16, 16] and y in [-17, 12]; fit it to the box.
    pts = []
    for i in range(steps):
        t = 2 * math.pi * i / steps
        hx = 16 * math.sin(t) ** 3
        hy = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x1 + (hx + 16) / 32 * (x2 - x1), y1 + (12 - hy) / 29 * (y2 - y1)))
    return pts


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x1, y1, x2, y2 = obj.box
    fill = COLOURS[obj.colour]
    side = x2 - x1
    if obj.shape == "circle":
        draw.ellipse(obj.box, fill=fill)
    elif obj.shape == "ring":
        draw.ellipse(obj.box, outline=fill, width=max(3, side // 6))
    elif obj.shape == "square":
        draw.rectangle(obj.box, fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
    elif obj.shape == "diamond":
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(obj.box), fill=fill)
    elif obj.shape == "cross":
        arm = side // 3
        draw.rectangle((x1 + arm, y1, x2 - arm, y2), fill=fill)
        draw.rectangle((x1, y1 + arm, x2, y2 - arm), fill=fill)
    elif obj.shape == "heart":
        draw.polygon(_heart(obj.box), fill=fill)
    else:  # pragma: no cover - CLASSES is closed
        raise ValueError(f"unknown shape {obj.shape!r}")


def render(scene: Scene) -> Image.Image:
    """The scene's pixels as an RGB image."""
    image = _background(scene)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    # A slight 3x3 smoothing makes the JPEG look photographic rather than vector-sharp.
    return image.filter(ImageFilter.SMOOTH)


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 88) -> bytes:
    """Encode an image to bytes (JPEG by default)."""
    buffer = io.BytesIO()
    if fmt.upper() == "JPEG":
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


def image_id(data: bytes) -> str:
    """The LAIT image id: sha256 hex of the image bytes."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Captions

_RELATIONS = (
    # (test on centres (a, b) -> bool, phrase "a REL b")
    (lambda a, b: a[0] < b[0] - 10, "left of"),
    (lambda a, b: a[0] > b[0] + 10, "right of"),
    (lambda a, b: a[1] < b[1] - 10, "above"),
    (lambda a, b: a[1] > b[1] + 10, "below"),
)

_BACKGROUND_WORDS = {
    "plain": "a plain background",
    "gradient": "a gradient background",
    "stripes": "a striped background",
    "noise": "a grainy background",
    "checker": "a checkered background",
}


def _relation(a: SceneObject, b: SceneObject) -> str:
    for test, phrase in _RELATIONS:
        if test(a.centre, b.centre):
            return phrase
    return "next to"


def article(phrase: str) -> str:
    """The phrase with its indefinite article (``a`` or ``an``)."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def captions(scene: Scene, rng: random.Random | None = None, k: int = 1) -> list[str]:
    """Up to ``k`` distinct true English captions of the scene, from several templates."""
    objs = scene.objects
    bg = _BACKGROUND_WORDS[scene.background]
    options: list[str] = []
    if len(objs) == 1:
        (a,) = objs
        options += [
            f"{article(a.phrase())} on {bg}",
            f"a picture of {article(a.phrase())}",
            f"{article(a.phrase())} drawn on {bg}",
            f"one {a.colour} {a.shape} of {a.size} size",
        ]
    else:
        a, b = objs[0], objs[1]
        options += [
            f"{article(a.phrase())} {_relation(a, b)} {article(b.phrase())}",
            f"{article(b.phrase())} {_relation(b, a)} {article(a.phrase())}",
            f"{article(a.phrase())} and {article(b.phrase())} on {bg}",
        ]
        if len(objs) == 3:
            c = objs[2]
            options = [f"{o} with {article(c.phrase())}" for o in options]
            options.append(f"three shapes: {article(a.phrase())}, {article(b.phrase())} and {article(c.phrase())}")
    if rng is None:
        return options[:k]
    rng.shuffle(options)
    return options[:k]


def generate_scenes(seed: int, n: int, prefix: str = "scene") -> list[Scene]:
    """``n`` scenes, identical for the same seed and prefix."""
    rng = random.Random(f"{seed}:{prefix}")
    return [make_scene(rng, f"{prefix}-{i:05d}") for i in range(n)]


def detector_samples(scenes: list[Scene]):
    """``(PIL.Image, boxes float32 [n,4] x1y1x2y2 pixels, labels int64 [n] 0-based)`` per scene."""
    return [(render(scene), scene.boxes, scene.labels) for scene in scenes]
