"""True scene captions in French, German and Spanish: the site's planted non-English text.

Grammar is handled only as far as these phrases need (gender and the German dative), so each
caption is a plausible sentence a French, German or Spanish page would carry.
"""
from __future__ import annotations

import random

from demo.scenes import Scene, SceneObject

LANGUAGES = ("fr", "de", "es")

_FR_SHAPES = {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
              "star": ("étoile", "f"), "cross": ("croix", "f"), "ring": ("anneau", "m"),
              "diamond": ("losange", "m"), "heart": ("cœur", "m")}
_FR_COLOURS = {"red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"),
               "yellow": ("jaune", "jaune"), "purple": ("violet", "violette"), "orange": ("orange", "orange"),
               "black": ("noir", "noire"), "white": ("blanc", "blanche")}
_FR_SIZES = {"small": ("petit", "petite"), "large": ("grand", "grande")}

_DE_SHAPES = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
              "star": ("Stern", "m"), "cross": ("Kreuz", "n"), "ring": ("Ring", "m"),
              "diamond": ("Raute", "f"), "heart": ("Herz", "n")}
# Dative forms after "einem/einer": every adjective ends in -en (lila does not decline).
_DE_COLOURS = {"red": "roten", "green": "grünen", "blue": "blauen", "yellow": "gelben", "purple": "lila",
               "orange": "orangen", "black": "schwarzen", "white": "weißen"}
_DE_SIZES = {"small": "kleinen", "large": "großen"}

_ES_SHAPES = {"circle": ("círculo", "m"), "square": ("cuadrado", "m"), "triangle": ("triángulo", "m"),
              "star": ("estrella", "f"), "cross": ("cruz", "f"), "ring": ("anillo", "m"),
              "diamond": ("rombo", "m"), "heart": ("corazón", "m")}
_ES_COLOURS = {"red": ("rojo", "roja"), "green": ("verde", "verde"), "blue": ("azul", "azul"),
               "yellow": ("amarillo", "amarilla"), "purple": ("morado", "morada"),
               "orange": ("naranja", "naranja"), "black": ("negro", "negra"), "white": ("blanco", "blanca")}
_ES_SIZES = {"small": ("pequeño", "pequeña"), "large": ("grande", "grande")}


def _fr(obj: SceneObject) -> str:
    noun, gender = _FR_SHAPES[obj.shape]
    i = 0 if gender == "m" else 1
    article = "un" if gender == "m" else "une"
    return f"{article} {_FR_SIZES[obj.size][i]} {noun} {_FR_COLOURS[obj.colour][i]}"


def _de(obj: SceneObject) -> str:
    noun, gender = _DE_SHAPES[obj.shape]
    article = "einer" if gender == "f" else "einem"
    return f"{article} {_DE_SIZES[obj.size]} {_DE_COLOURS[obj.colour]} {noun}"


def _es(obj: SceneObject) -> str:
    noun, gender = _ES_SHAPES[obj.shape]
    i = 0 if gender == "m" else 1
    article = "un" if gender == "m" else "una"
    return f"{article} {noun} {_ES_COLOURS[obj.colour][i]} {_ES_SIZES[obj.size][i]}"


_TEMPLATES = {
    "fr": (_fr, " et ", ["une image avec {objs} sur un fond coloré", "on voit {objs} dans cette illustration"]),
    "de": (_de, " und ", ["ein Bild mit {objs} vor einem farbigen Hintergrund", "eine Zeichnung mit {objs} auf dieser Seite"]),
    "es": (_es, " y ", ["una imagen con {objs} sobre un fondo de color", "se ve {objs} en esta ilustración"]),
}


def foreign_caption(scene: Scene, lang: str, rng: random.Random) -> str:
    """A true caption of ``scene`` in ``lang`` (one of ``LANGUAGES``)."""
    phrase, joiner, templates = _TEMPLATES[lang]
    objs = joiner.join(phrase(o) for o in scene.objects[:2])
    return rng.choice(templates).format(objs=objs)


#: Visible page text per language, so the page's own language is evident too.
PAGE_TEXT = {
    "en": "Welcome to our gallery of simple shapes. Every picture shows a few coloured figures.",
    "fr": "Bienvenue dans notre galerie de formes simples. Chaque image montre quelques figures colorées.",
    "de": "Willkommen in unserer Galerie einfacher Formen. Jedes Bild zeigt einige farbige Figuren.",
    "es": "Bienvenido a nuestra galería de formas simples. Cada imagen muestra algunas figuras de colores.",
}
