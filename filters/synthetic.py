"""Synthetic candidates for tests and benchmarks: photographs-like images and web-like alt text.

Images are drawn (gradients, shapes, noise) so that they pass the image rules and hash apart;
texts mix captions with the problems the filters exist for, in known proportions.
"""
from __future__ import annotations

import hashlib
import io
import random
from typing import Any

ENGLISH = [
    "a brown dog running along the beach at sunset", "two children playing football in a park",
    "a red bicycle leaning against a brick wall", "fresh vegetables on a wooden kitchen table",
    "an old lighthouse on a rocky coast", "a woman reading a book in a quiet cafe",
    "snow covered mountains under a clear blue sky", "a cup of coffee next to a laptop",
    "a group of friends hiking through the forest", "the city skyline at night with bright lights",
    "a cat sleeping on a sunny window sill", "a small boat floating on a calm lake",
]
GERMAN = ["ein schwarzer Hund läuft über die Wiese", "frisches Brot auf dem Küchentisch",
          "die Altstadt im Winter bei Nacht"]
FRENCH = ["un chat noir dort sur le canapé", "la plage au coucher du soleil avec des enfants"]
SPANISH = ["un perro marrón corre por la playa", "la ciudad de noche con muchas luces"]
BAD_TEXT = ["IMG_1234.jpg", "click here", "company logo", "www.example.com/photo", "12345 678 9/10",
            "cat cat cat cat", "photo", ""]
SUBJECTS = ["dog", "cat", "house", "car", "tree", "lake", "garden", "bridge", "street", "market", "train", "horse"]
PLACES = ["in the morning light", "near the old harbour", "on a rainy afternoon", "beside the river",
          "in a busy town square", "under a stormy sky", "at the edge of the forest", "during the summer festival"]


def make_image(seed: int, width: int = 320, height: int = 320, fmt: str = "JPEG", blank: bool = False) -> bytes:
    """A drawn image (gradient + shapes), distinct per seed; ``blank`` gives one flat colour."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    if blank:
        img = Image.new("RGB", (width, height), (200, 200, 200))
    else:
        img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = rng.randrange(width), rng.randrange(height)
            x1, y1 = x0 + rng.randrange(20, width), y0 + rng.randrange(20, height)
            colour = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def english_caption(rng: random.Random) -> str:
    """A varied English caption (subject, place, number) so captions rarely repeat."""
    return f"a {rng.choice(['small', 'large', 'old', 'quiet', 'bright'])} {rng.choice(SUBJECTS)} " \
           f"{rng.choice(PLACES)} number {rng.randrange(10_000)}"


def candidate(image_bytes: bytes, alt: str | None, index: int, page: int = 0, title: str | None = None,
              page_lang: str | None = "en", page_text: str | None = None, width: int | None = None,
              height: int | None = None) -> dict[str, Any]:
    """One candidates-schema row around the given image and texts."""
    page_url = f"http://127.0.0.1/page/{page}.html"
    image_url = f"http://127.0.0.1/img/{index}.jpg"
    return {
        "candidate_id": hashlib.sha1(f"{page_url}|{image_url}|{alt}|{title}|{index}".encode()).hexdigest(),
        "image_id": hashlib.sha256(image_bytes).hexdigest() if image_bytes else "",
        "page_url": page_url, "image_url": image_url, "alt": alt, "title": title, "figcaption": None,
        "page_lang": page_lang, "page_title": f"page {page}",
        "page_text": page_text if page_text is not None else "Photos from our trip. " + " ".join(ENGLISH[:4]),
        "http_status": 200, "content_type": "image/jpeg", "image_bytes": image_bytes, "width": width,
        "height": height, "format": "JPEG", "num_bytes": len(image_bytes or b""), "source": "crawl",
    }


def make_candidates(n: int, seed: int = 0, distinct_images: int | None = None) -> list[dict[str, Any]]:
    """``n`` candidates: about 70% good English pairs, the rest foreign, bad text or bad images.

    ``distinct_images`` caps how many different images are drawn (they are reused, as on the web,
    which also keeps generation fast).
    """
    rng = random.Random(seed)
    pool_size = distinct_images or n
    pool: dict[int, bytes] = {}

    def image(i: int) -> bytes:
        key = i % pool_size
        if key not in pool:
            pool[key] = make_image(seed * 1_000_003 + key)
        return pool[key]

    rows = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.70:
            rows.append(candidate(image(i), english_caption(rng), i, page=i // 10))
        elif roll < 0.80:
            text = rng.choice(GERMAN + FRENCH + SPANISH)
            rows.append(candidate(image(i), text, i, page=i // 10, page_lang="de", page_text=text))
        elif roll < 0.92:
            rows.append(candidate(image(i), rng.choice(BAD_TEXT), i, page=i // 10))
        elif roll < 0.96:
            small = pool.setdefault(-1, make_image(7, 120, 90))
            rows.append(candidate(small, english_caption(rng), i, page=i // 10))
        else:
            rows.append(candidate(b"\x89PNG not really an image" * 50, english_caption(rng), i, page=i // 10))
    return rows
