"""An offline image–caption pool of procedurally rendered scenes, with labelled attributes.

Each scene is an RGB image with 1–3 objects on a background. An object has a ``shape``, ``color``,
``size``, ``position`` and ``texture``; the first object is the *main* one (drawn last, so never
hidden, and never smaller than the others), and its attributes are the scene's `ClassLabel` columns,
so zero-shot classification (`scene_zero_shot_classes`) and retrieval are measurable on the clean
``test`` split. Every scene comes with several caption styles and paraphrases (``captions``), one of
which, drawn at random, is the row's ``caption``:

| style            | example                                             |
|------------------|-----------------------------------------------------|
| main + position  | ``a small striped red circle on the left``           |
| photo of         | ``a photo of a small striped red circle``            |
| there is         | ``there is a red circle and a blue square``          |
| layout           | ``a red circle on the left and a blue square at the top`` |
| count            | ``two shapes: a red circle and a blue square``       |
| background       | ``a red circle on a noisy background``               |
| alt text         | ``red circle``, ``red circle icon``                  |

Rendering uses PIL's ImageDraw for the shape masks and NumPy for textures and backgrounds
(20,000 scenes of 64×64 take seconds on one core, PNG encoding included).
"""

from __future__ import annotations

import math

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value

from ..ops.checks import check_positive_int, seed_int
from .images import encode_png

__all__ = [
    "SCENE_ATTRIBUTES", "SCENE_BACKGROUNDS", "SCENE_COLORS", "SCENE_POSITIONS", "SCENE_SHAPES", "SCENE_SIZES",
    "SCENE_TEXTURES", "load_scenes", "render_scenes", "scene_zero_shot_classes",
]

SCENE_SHAPES = ["circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "heart"]
_RGB = {
    "red": (215, 30, 30), "orange": (245, 135, 20), "yellow": (240, 215, 30), "green": (35, 155, 50),
    "blue": (35, 70, 215), "purple": (135, 45, 170), "pink": (245, 120, 185), "brown": (125, 75, 30),
}
SCENE_COLORS = list(_RGB)
SCENE_SIZES = ["small", "large"]
SCENE_POSITIONS = ["left", "right", "top", "bottom", "centre"]
SCENE_TEXTURES = ["solid", "striped", "dotted"]
SCENE_BACKGROUNDS = ["plain", "gradient", "noise"]
SCENE_ATTRIBUTES = {
    "shape": SCENE_SHAPES, "color": SCENE_COLORS, "size": SCENE_SIZES, "position": SCENE_POSITIONS,
    "texture": SCENE_TEXTURES, "background": SCENE_BACKGROUNDS,
}
# Background tones stay apart from the object palette, so an object never vanishes into its background.
_TONES = {"light gray": (200, 200, 200), "dark gray": (70, 70, 70), "beige": (225, 212, 180), "slate": (105, 125, 145)}
_TONE_NAMES = list(_TONES)
# Object centres as fractions of the side; far enough apart that two large objects barely touch.
_CENTRES = {"left": (0.22, 0.5), "right": (0.78, 0.5), "top": (0.5, 0.22), "bottom": (0.5, 0.78), "centre": (0.5, 0.5)}
_RADIUS = {"small": 0.09, "large": 0.15}
_POSITION_PHRASE = {
    "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
    "centre": "in the centre",
}
_COUNT_WORDS = ["one", "two", "three", "four", "five"]
_ALT_SUFFIXES = ["icon", "clipart", "illustration", "graphic", "shape", "vector"]
_ZERO_SHOT_TEMPLATES = {
    "shape": ["a photo of a {}.", "a {}.", "a drawing of a {}.", "there is a {} in the picture.", "a {} shape."],
    "color": ["a photo of a {} shape.", "a {} object.", "something {}.", "a drawing of a {} shape."],
    "size": ["a photo of a {} shape.", "a {} object.", "a drawing of a {} shape."],
    "texture": ["a photo of a {} shape.", "a {} object.", "a drawing of a {} shape."],
    "background": ["a shape on a {} background.", "a photo with a {} background."],
}


def scene_zero_shot_classes(attribute: str = "shape") -> tuple[list[str], list[str]]:
    """Class names and prompt templates for zero-shot classification of a scene attribute.

    The class names are in the order of the attribute's `ClassLabel` column (``ds["test"][attribute]``
    holds their ids), and each template has one ``{}`` for a class name, as in CLIP's protocol: a
    class's text embedding is the mean over its templates. Attributes: ``shape``, ``color``,
    ``size``, ``texture``, ``background``.

    Example:
        >>> names, templates = scene_zero_shot_classes("shape")
        >>> templates[0].format(names[0])
        'a photo of a circle.'
    """
    if attribute not in _ZERO_SHOT_TEMPLATES:
        raise ValueError(f"`attribute` must be one of {tuple(_ZERO_SHOT_TEMPLATES)}, got {attribute!r}")
    names = {"background": ["plain", "gradient", "noisy"]}.get(attribute, SCENE_ATTRIBUTES[attribute])
    return list(names), list(_ZERO_SHOT_TEMPLATES[attribute])


def _unit_polygon(shape: str) -> np.ndarray:
    """``(V, 2)`` vertices around the origin, scaled so that all shapes look about the same size."""
    def ring(count, radius, start):
        angles = np.deg2rad(start + 360.0 * np.arange(count) / count)
        return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    if shape == "square":
        return ring(4, 1.2, 45)
    if shape == "diamond":  # a rhombus, narrower than tall, so it is not just a rotated square
        return ring(4, 1.15, -90) * np.array([0.7, 1.0])
    if shape == "triangle":
        return ring(3, 1.15, -90) + np.array([0.0, 0.15])
    if shape == "star":
        outer, inner = ring(5, 1.2, -90), ring(5, 0.5, -54)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if shape == "hexagon":
        return ring(6, 1.05, 0)
    if shape == "cross":
        a, b = 0.36, 1.05
        return np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a),
                         (-b, -a), (-a, -a)])
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], axis=1) / 14.0
    raise ValueError(f"unknown shape {shape!r}")


_POLYGONS = {shape: _unit_polygon(shape) for shape in SCENE_SHAPES if shape != "circle"}


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _scene_captions(objects: list[dict], background: str, tone: str, rng: np.random.Generator) -> list[str]:
    """The paraphrases of one scene, one per style (module docstring); the main object comes first."""
    main = objects[0]
    texture = "" if main["texture"] == "solid" else main["texture"] + " "
    full = f"{main['size']} {texture}{main['color']} {main['shape']}"
    short = [f"{o['color']} {o['shape']}" for o in objects]
    if background == "plain":
        ground = f"on a {tone} background"
    else:
        ground = "on a gradient background" if background == "gradient" else "on a noisy background"
    count = _COUNT_WORDS[len(objects) - 1]
    return [
        f"{_article(full)} {_POSITION_PHRASE[main['position']]}",
        f"a photo of {_article(full)}",
        "there is " + _join([_article(s) for s in short]),
        _join([f"{_article(s)} {_POSITION_PHRASE[o['position']]}" for s, o in zip(short, objects)]),
        f"{count} shape{'s' if len(objects) > 1 else ''}: " + _join([_article(s) for s in short]),
        f"{_article(short[0])} {ground}",
        short[0],
        f"{short[0]} {_ALT_SUFFIXES[rng.integers(len(_ALT_SUFFIXES))]}",
    ]


def _draw_scene(attributes: dict, size: int, patterns: dict, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image as PILImage
    from PIL import ImageDraw

    background, tone = attributes["background"], np.array(_TONES[attributes["tone"]], dtype=np.int16)
    if background == "plain":
        image = np.broadcast_to(tone.astype(np.uint8), (size, size, 3)).copy()
    elif background == "gradient":
        other = np.array(_TONES[_TONE_NAMES[rng.integers(len(_TONE_NAMES))]], dtype=np.float32)
        ramp = np.linspace(0.0, 0.8, size, dtype=np.float32)[:, None] * (other - tone)[None, :] + tone
        ramp = np.round(ramp).astype(np.uint8)
        image = np.ascontiguousarray(np.broadcast_to(ramp[None], (size, size, 3)) if rng.integers(2)
                                     else np.broadcast_to(ramp[:, None], (size, size, 3)))
    else:
        image = np.clip(tone + rng.integers(-45, 46, size=(size, size, 3), dtype=np.int16), 0, 255).astype(np.uint8)
    # Draw the others first, the main object last, so it is always fully visible. Each mask is drawn
    # only over the object's bounding box, a few hundred pixels instead of the whole image.
    for obj in reversed(attributes["objects"]):
        fx, fy = _CENTRES[obj["position"]]
        cx, cy = (fx + rng.uniform(-0.03, 0.03)) * size, (fy + rng.uniform(-0.03, 0.03)) * size
        radius = _RADIUS[obj["size"]] * size * rng.uniform(0.92, 1.08)
        if obj["shape"] == "circle":
            r = 0.95 * radius
            points = np.array([[cx - r, cy - r], [cx + r, cy + r]])
        else:
            angle = np.deg2rad(rng.uniform(-10, 10))
            rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            points = _POLYGONS[obj["shape"]] @ rotation.T * radius + np.array([cx, cy])
        x0, y0 = (max(0, int(v)) for v in points.min(axis=0))
        x1, y1 = (min(size, int(v) + 2) for v in points.max(axis=0))
        if x1 <= x0 or y1 <= y0:
            continue
        mask_image = PILImage.new("L", (x1 - x0, y1 - y0), 0)
        local = [tuple(p) for p in points - np.array([x0, y0])]
        if obj["shape"] == "circle":
            ImageDraw.Draw(mask_image).ellipse(local, fill=255)
        else:
            ImageDraw.Draw(mask_image).polygon(local, fill=255)
        mask = np.asarray(mask_image) > 0
        box = image[y0:y1, x0:x1]
        colour = np.array(_RGB[obj["color"]], dtype=np.uint8)
        if obj["texture"] == "solid":
            box[mask] = colour
        else:
            on = patterns[obj["texture"]][y0:y1, x0:x1]
            box[mask & on] = colour
            box[mask & ~on] = 255  # white gaps between stripes, white dots on the colour
    return image


def _patterns(size: int) -> dict:
    yy, xx = np.mgrid[:size, :size]
    period = max(4, size // 10)
    dots = ((xx % period) - period // 2) ** 2 + ((yy % period) - period // 2) ** 2 <= max(1, period // 4) ** 2
    return {"striped": ((xx + yy) // max(2, period // 2)) % 2 == 0, "dotted": ~dots}


def _draw_attributes(n: int, min_objects: int, max_objects: int, rng: np.random.Generator) -> list[dict]:
    scenes = []
    counts = rng.integers(min_objects, max_objects + 1, size=n)
    for count in counts:
        positions = rng.permutation(len(SCENE_POSITIONS))[:count]
        # Distinct shapes and colours within a scene, so every caption names each object unambiguously.
        shapes = rng.permutation(len(SCENE_SHAPES))[:count]
        colours = rng.permutation(len(SCENE_COLORS))[:count]
        main_size = int(rng.integers(2))
        objects = []
        for k in range(count):
            size = main_size if k == 0 else int(rng.integers(main_size + 1))  # never larger than the main one
            objects.append({
                "shape": SCENE_SHAPES[shapes[k]], "color": SCENE_COLORS[colours[k]], "size": SCENE_SIZES[size],
                "position": SCENE_POSITIONS[positions[k]], "texture": SCENE_TEXTURES[rng.integers(len(SCENE_TEXTURES))],
            })
        scenes.append({
            "objects": objects,
            "background": SCENE_BACKGROUNDS[rng.integers(len(SCENE_BACKGROUNDS))],
            "tone": _TONE_NAMES[rng.integers(len(_TONE_NAMES))],
        })
    return scenes


def _features() -> Features:
    obj = {name: Value("string") for name in ("shape", "color", "size", "position", "texture")}
    return Features({
        "image": Image(), "caption": Value("string"), "captions": List(Value("string")),
        **{name: ClassLabel(names=names) for name, names in SCENE_ATTRIBUTES.items()},
        "num_objects": Value("int64"), "objects": List(obj),
    })


def render_scenes(
    num_scenes: int,
    *,
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 3,
    seed: int | np.random.Generator = 0,
) -> Dataset:
    """``num_scenes`` scenes as one Dataset (columns as in `load_scenes`), drawn from ``default_rng(seed)``
    (a Generator ``seed`` gives one draw).

    Example:
        >>> render_scenes(4, seed=0).column_names[:3]
        ['image', 'caption', 'captions']
    """
    num_scenes = check_positive_int("num_scenes", num_scenes, minimum=0)
    image_size = check_positive_int("image_size", image_size, minimum=16)
    min_objects = check_positive_int("min_objects", min_objects)
    max_objects = check_positive_int("max_objects", max_objects)
    if not min_objects <= max_objects <= len(SCENE_POSITIONS):
        raise ValueError(
            f"`max_objects` must be in [min_objects, {len(SCENE_POSITIONS)}], got min_objects={min_objects}, "
            f"max_objects={max_objects}"
        )
    rng = np.random.default_rng(seed_int(seed))
    scenes = _draw_attributes(num_scenes, min_objects, max_objects, rng)
    patterns = _patterns(image_size)
    images = np.empty((num_scenes, image_size, image_size, 3), dtype=np.uint8)
    captions, chosen = [], []
    for i, scene in enumerate(scenes):
        images[i] = _draw_scene(scene, image_size, patterns, rng)
        paraphrases = _scene_captions(scene["objects"], scene["background"], scene["tone"], rng)
        captions.append(paraphrases)
        chosen.append(paraphrases[rng.integers(len(paraphrases))])
    columns = {
        "image": [{"bytes": b, "path": None} for b in encode_png(images)],
        "caption": chosen,
        "captions": captions,
        **{name: [names.index(s["objects"][0][name]) if name in s["objects"][0] else names.index(s[name])
                  for s in scenes] for name, names in SCENE_ATTRIBUTES.items()},
        "num_objects": [len(s["objects"]) for s in scenes],
        "objects": [s["objects"] for s in scenes],
    }
    return Dataset.from_dict(columns, features=_features())


def load_scenes(
    *,
    num_train: int = 20000,
    num_test: int = 2000,
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 3,
    test_max_objects: int | None = None,
    seed: int | np.random.Generator = 0,
) -> DatasetDict:
    """The procedural scenes pool (module docstring) as a `DatasetDict` with ``train`` and ``test`` splits.

    Columns: ``image`` (RGB PNG `datasets.Image`, ``image_size`` square), ``caption`` (one of the
    scene's paraphrases, drawn at random), ``captions`` (all of them, one per style), the main
    object's ``shape``, ``color``, ``size``, ``position``, ``texture`` and the scene's ``background``
    as `ClassLabel` columns (names in `SCENE_ATTRIBUTES`), ``num_objects``, and ``objects`` (every
    object's attributes as strings, the main one first).

    Each scene has ``min_objects``..``max_objects`` objects (uniform) at distinct positions, with
    distinct shapes and distinct colours. ``test_max_objects`` (default: ``max_objects``) caps the
    test split's objects; ``test_max_objects=1`` makes zero-shot labels unambiguous. ``seed`` is an
    integer ≥ 0 or a NumPy Generator (one draw from it); the splits use the independent streams
    ``[seed, 0]`` and ``[seed, 1]``, so the test split does not change with ``num_train``.

    Example:
        >>> ds = load_scenes(num_train=1000, num_test=200, seed=0)
        >>> names, templates = scene_zero_shot_classes("shape")
        >>> ds["test"].features["shape"].names == names
        True
    """
    num_train = check_positive_int("num_train", num_train, minimum=0)
    num_test = check_positive_int("num_test", num_test, minimum=0)
    if test_max_objects is not None:
        test_max_objects = check_positive_int("test_max_objects", test_max_objects)
        if not min_objects <= test_max_objects <= len(SCENE_POSITIONS):
            raise ValueError(f"`test_max_objects` must be in [min_objects, {len(SCENE_POSITIONS)}], got {test_max_objects}")
    seed = seed_int(seed)
    test_max_objects = max_objects if test_max_objects is None else test_max_objects
    kw = dict(image_size=image_size, min_objects=min_objects)
    return DatasetDict({
        "train": render_scenes(num_train, max_objects=max_objects, seed=np.random.default_rng([seed, 0]), **kw),
        "test": render_scenes(num_test, max_objects=test_max_objects, seed=np.random.default_rng([seed, 1]), **kw),
    })
