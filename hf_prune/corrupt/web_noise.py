"""Web noise for image–caption pools: the failure modes of scraped pairs, each marking its rows.

Five kinds, each changing exactly ``round(rate · N)`` seeded-random rows (``corruption`` names the kind):

| kind              | function                  | what changes in a chosen row                                      |
|-------------------|---------------------------|-------------------------------------------------------------------|
| `mismatch`        | `mismatched_pairs`        | its caption: the chosen rows' captions are permuted so that none  |
|                   |                           | keeps its own (a derangement), and, with ``label_column``, each   |
|                   |                           | caption comes from an image of another class                      |
| `uninformative`   | `uninformative_captions`  | its caption: a file name (``IMG_2041.jpg``) or boilerplate        |
|                   |                           | (``click here to download``, ``stock photo``)                     |
| `near_duplicate`  | `near_duplicates`         | the whole row becomes a near-copy of a clean *source* row: the    |
|                   |                           | source's image with a small crop and brightness jitter, its       |
|                   |                           | caption lightly paraphrased, its other columns copied (``row_id`` |
|                   |                           | stays); ``duplicate_of`` holds the source's row position          |
| `low_information` | `low_information_images`  | its image: one flat random colour or uniform noise (half each),   |
|                   |                           | same size and channels                                            |
| `wrong_language`  | `wrong_language_captions` | its caption: words of another language (German, Spanish, Russian, |
|                   |                           | Chinese, ... from small built-in lists), transliterations, or     |
|                   |                           | random Cyrillic/Greek/CJK/Hangul/Arabic characters                |

Near-duplicates *replace* rows rather than add them, so the pool keeps its size and every rate is
a share of the rows: a pool corrupted at 30% has exactly 30% flagged rows, whose source rows stay
clean. `web_noise` applies several kinds at once on disjoint rows; each single-kind function is
`web_noise` with one rate, so both give the same rows for the same seed.

Every changed row really differs from its input (a new caption is never the old one, a new image
never the old pixels), and unchanged rows keep their stored bytes, so the flags are exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
from datasets import Dataset, Image, Value

from ..data.images import decode_images, encode_png, images_to_arrow
from ..ops.arrow import column_array
from ..ops.checks import check_probability
from ..ops.columns import read_labels
from ._common import check_corruption_args, corrupted_count, flag_array, replace_columns

__all__ = [
    "WEB_NOISE", "low_information_images", "mismatched_pairs", "near_duplicates", "paraphrase", "uninformative_captions",
    "web_noise", "wrong_language_captions",
]

WEB_NOISE = ("mismatch", "uninformative", "near_duplicate", "low_information", "wrong_language")
_TEXT_KINDS = {"mismatch", "uninformative", "near_duplicate", "wrong_language"}
_IMAGE_KINDS = {"near_duplicate", "low_information"}

# --- uninformative captions ------------------------------------------------------------------------

_FILE_PREFIXES = ["IMG_", "DSC_", "DSC0", "PXL_", "image", "photo", "DCIM", "P10", "GOPR", "file_", "untitled-", "pic"]
_EXTENSIONS = [".jpg", ".JPG", ".jpeg", ".png", ".PNG", ".webp", ".gif"]
_BOILERPLATE = [
    "click here to download", "stock photo", "stock image", "image may contain: text", "untitled", "thumbnail",
    "no description available", "view full size", "free shipping on all orders", "loading...", "photo", "image",
    "default image", "placeholder", "click to enlarge", "download free", "royalty free stock photo",
    "copyright all rights reserved", "advertisement", "image not found", "see more", "product image 1",
    "picture", "home", "share this", "subscribe for more",
]


def _uninformative(rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return _BOILERPLATE[rng.integers(len(_BOILERPLATE))]
    ext = _EXTENSIONS[rng.integers(len(_EXTENSIONS))]
    form = rng.integers(4)
    if form == 0:
        return f"{_FILE_PREFIXES[rng.integers(len(_FILE_PREFIXES))]}{rng.integers(10000):04d}{ext}"
    if form == 1:
        day = f"20{rng.integers(10, 25)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        return f"IMG_{day}_{rng.integers(240000):06d}{ext}"
    if form == 2:
        return "".join(f"{b:02x}" for b in rng.integers(256, size=8)) + ext
    return f"image ({rng.integers(1, 40)}){ext}"


# --- wrong-language captions -----------------------------------------------------------------------

_WORDS = {
    "de": ["ein", "Bild", "von", "roter", "Kreis", "kaufen", "jetzt", "günstig", "neue", "Farbe", "groß", "klein",
           "mit", "und", "Hintergrund", "Angebot", "Schuhe", "Haus"],
    "es": ["una", "foto", "de", "círculo", "rojo", "comprar", "ahora", "nuevo", "grande", "pequeño", "con", "fondo",
           "oferta", "envío", "gratis", "casa"],
    "fr": ["une", "photo", "du", "cercle", "rouge", "acheter", "maintenant", "nouveau", "petit", "avec", "fond",
           "livraison", "gratuite", "maison"],
    "tr": ["bir", "resim", "kırmızı", "daire", "satın", "al", "yeni", "büyük", "küçük", "ücretsiz", "kargo", "ev"],
    "ru": ["фото", "красный", "круг", "синий", "квадрат", "купить", "скачать", "бесплатно", "новый", "большой",
           "маленький", "на", "фоне", "картинка", "дом"],
    "el": ["φωτογραφία", "κόκκινος", "κύκλος", "μπλε", "αγορά", "δωρεάν", "νέο", "μεγάλο", "σπίτι"],
    "zh": ["图片", "免费", "下载", "红色", "圆形", "蓝色", "正方形", "新款", "高清", "背景", "包邮"],
    "ja": ["写真", "赤い", "丸", "青い", "四角", "無料", "ダウンロード", "画像", "背景", "新しい", "送料無料"],
    "ko": ["사진", "빨간", "원", "파란", "무료", "다운로드", "이미지", "배경"],
    "ar": ["صورة", "أحمر", "دائرة", "أزرق", "تحميل", "مجاني", "جديد", "خلفية"],
}
_UNSPACED = {"zh", "ja"}
_TRANSLITERATED = [
    "krasnyy", "krug", "kartinka", "besplatno", "skachat", "kupit", "novyy", "akai", "maru", "shashin", "muryou",
    "daunrodo", "gazou", "hongse", "yuanxing", "tupian", "xiazai", "mianfei", "xinkuan", "sajin", "mulyo", "sura",
]
_SCRIPTS = [(0x0430, 0x044F), (0x03B1, 0x03C9), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x0627, 0x064A)]


def _wrong_language(rng: np.random.Generator) -> str:
    style = rng.integers(3)
    if style == 0:
        language = list(_WORDS)[rng.integers(len(_WORDS))]
        words = _WORDS[language]
        picked = [words[i] for i in rng.integers(len(words), size=rng.integers(2, 7))]
        return ("" if language in _UNSPACED else " ").join(picked)
    if style == 1:
        return " ".join(_TRANSLITERATED[i] for i in rng.integers(len(_TRANSLITERATED), size=rng.integers(2, 6)))
    low, high = _SCRIPTS[rng.integers(len(_SCRIPTS))]
    return " ".join("".join(chr(c) for c in rng.integers(low, high + 1, size=rng.integers(2, 8)))
                    for _ in range(rng.integers(1, 5)))


def _new_caption(make, old: str | None, rng: np.random.Generator) -> str:
    # A generated caption equal to the old one would be a flagged row that did not change.
    for _ in range(100):
        caption = make(rng)
        if caption != old:
            return caption
    return caption + " 1"


# --- near-duplicates -------------------------------------------------------------------------------

_SYNONYMS = {
    "photo": "picture", "picture": "photo", "image": "picture", "small": "little", "little": "small", "large": "big",
    "big": "large", "centre": "middle", "middle": "centre", "there": "here", "shape": "figure", "shapes": "figures",
    "handwritten": "hand-written", "grayscale": "greyscale", "number": "numeral", "digit": "numeral",
}
_AFFIXES = [("", " (hd)"), ("", " - photo"), ("", " 2"), ("photo: ", ""), ("", " [image]"), ("new ", "")]


def paraphrase(caption: str, rng: np.random.Generator) -> str:
    """A light rewrite of ``caption`` that is never equal to it: one or two of a synonym swap, a
    capitalisation change, a trailing full stop added or dropped, a short prefix or suffix.

    Example:
        >>> paraphrase("a photo of a red circle", np.random.default_rng(0)) != "a photo of a red circle"
        True
    """
    text = caption
    for op in rng.permutation(4)[: rng.integers(1, 3)]:
        if op == 0:
            words = text.split(" ")
            swappable = [i for i, w in enumerate(words) if w.lower() in _SYNONYMS]
            if swappable:
                i = swappable[rng.integers(len(swappable))]
                words[i] = _SYNONYMS[words[i].lower()]
                text = " ".join(words)
        elif op == 1 and text[:1].isalpha():
            text = (text[0].lower() if text[0].isupper() else text[0].upper()) + text[1:]
        elif op == 2:
            text = text[:-1] if text.endswith(".") and len(text) > 1 else text + "."
        elif op == 3:
            prefix, suffix = _AFFIXES[rng.integers(len(_AFFIXES))]
            text = prefix + text + suffix
    if text == caption:  # no synonym to swap, say: the full stop always changes something
        text = text[:-1] if text.endswith(".") and len(text) > 1 else text + "."
    return text


def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small random crop (resized back) and a brightness/contrast change of an ``(H, W, C)`` image."""
    from PIL import Image as PILImage

    h, w, c = image.shape
    top, bottom = rng.integers(0, max(1, round(0.06 * h)) + 1, size=2)
    left, right = rng.integers(0, max(1, round(0.06 * w)) + 1, size=2)
    crop = image[top : h - bottom if h - bottom > top else h, left : w - right if w - right > left else w]
    pil = PILImage.fromarray(crop[..., 0] if c == 1 else crop).resize((w, h), PILImage.BILINEAR)
    out = np.asarray(pil, dtype=np.float32).reshape(h, w, c)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.9, 1.1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _differ(image: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """``image``, nudged by one grey level in one pixel if it equals any of ``others``."""
    image = image.copy()
    for _ in range(2 * len(others) + 1):
        if not any(o.shape == image.shape and np.array_equal(o, image) for o in others):
            return image
        image.flat[0] = (int(image.flat[0]) + 1) % 256
    return image


def _low_information(image: np.ndarray, blank: bool, rng: np.random.Generator) -> np.ndarray:
    h, w, c = image.shape
    if blank:
        colour = rng.integers(256, size=c)
        out = np.broadcast_to(colour.astype(np.uint8), (h, w, c)).copy()
        if np.array_equal(out, image):  # the input was already this flat colour
            out = (out.astype(np.int64) + 128) % 256
        return out.astype(np.uint8)
    return _differ(rng.integers(0, 256, size=(h, w, c), dtype=np.uint8), image)


# --- mismatched pairs ------------------------------------------------------------------------------

def _derangement(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """``perm`` with ``keys[perm[j]] != keys[j]`` for all ``j``, or ``None`` if one key holds over half.

    Rows are sorted by key (groups in random order, rows in random order inside each group) and
    each takes the row ``s`` places further on, cyclically, with ``s`` uniform in
    ``[g, m − g]`` for the largest group size ``g``: a group spans at most ``g ≤ s`` consecutive
    places and at most ``m − s`` places wrap around to it, so no row lands in its own group.
    """
    m = len(keys)
    _, codes = np.unique(keys, return_inverse=True)
    largest = int(np.bincount(codes).max()) if m else 0
    if 2 * largest > m:
        return None
    order = np.lexsort((rng.random(m), rng.permutation(codes.max() + 1)[codes]))
    shift = int(rng.integers(largest, m - largest + 1))
    perm = np.empty(m, dtype=np.int64)
    perm[order] = order[(np.arange(m) + shift) % m]
    return perm


def _repair(perm: np.ndarray, labels: np.ndarray, captions: np.ndarray) -> np.ndarray:
    """Swap targets until no row gets its own caption text back, keeping the labels apart."""
    for j in np.flatnonzero(captions[perm] == captions):
        if captions[perm[j]] != captions[j]:
            continue  # fixed by an earlier swap
        # t can give j its caption and take j's, when both rows then hold a foreign label and caption.
        ok = ((labels[perm] != labels[j]) & (captions[perm] != captions[j])
              & (labels != labels[perm[j]]) & (captions != captions[perm[j]]))
        candidates = np.flatnonzero(ok)
        if not len(candidates):
            return None
        t = candidates[0]
        perm[j], perm[t] = perm[t], perm[j]
    return perm


def _mismatch(captions: list, labels: np.ndarray | None, label_column: str | None, rng: np.random.Generator) -> list:
    m = len(captions)
    _, caption_codes = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    perm = None
    if labels is not None:
        perm = _derangement(labels, rng)
        if perm is not None:
            perm = _repair(perm, labels, caption_codes)
        if perm is None:
            warnings.warn(
                f"mismatched pairs: {m} chosen rows cannot all get a caption from another class of {label_column!r} "
                "(one class holds more than half of them, or caption texts repeat across classes); captions are only "
                "kept apart from their own text",
                UserWarning, stacklevel=3,
            )
    if perm is None:
        perm = _derangement(caption_codes, rng)
    if perm is None:
        raise ValueError(
            f"cannot mismatch {m} captions so that none keeps its own text: one caption is shared by more than half of "
            "the chosen rows (or fewer than 2 rows are chosen); lower or raise rates['mismatch']"
        )
    return [captions[i] for i in perm]


# --- the shared driver -----------------------------------------------------------------------------

def _check_rates(rates) -> dict[str, float]:
    if not isinstance(rates, Mapping) or not rates:
        raise ValueError(f"`rates` must be a non-empty mapping from kinds {WEB_NOISE} to rates, got {rates!r}")
    unknown = [k for k in rates if k not in WEB_NOISE]
    if unknown:
        raise ValueError(f"`rates` has unknown kinds {unknown}; choose from {WEB_NOISE}")
    checked = {k: check_probability(f"rates[{k!r}]", rates[k]) for k in WEB_NOISE if k in rates}
    if sum(checked.values()) > 1 + 1e-9:
        raise ValueError(f"`rates` add up to {sum(checked.values()):g}; the kinds take disjoint rows, so at most 1")
    return checked


def _replaced(current: pa.Array, rows: np.ndarray, new: pa.Array) -> pa.Array:
    """``current`` (row order) with ``rows`` taking ``new``'s values in order; other rows keep their bytes."""
    if len(rows) == 0:
        return current
    order = np.arange(len(current), dtype=np.int64)
    order[np.asarray(rows, dtype=np.int64)] = len(current) + np.arange(len(rows))
    return pa.concat_arrays([current, new.cast(current.type)]).take(pa.array(order))


def _encode(images: list[np.ndarray], like: pa.DataType, feature) -> pa.Array:
    if isinstance(feature, Image):  # one PNG per image: web images may all differ in size
        struct = pa.StructArray.from_arrays(
            [pa.array(encode_png(images), type=pa.binary()), pa.array([None] * len(images), type=pa.string())],
            names=["bytes", "path"],
        )
        return struct.cast(like)
    return images_to_arrow(np.stack(images), like, feature)


def web_noise(
    dataset: Dataset,
    *,
    rates: Mapping[str, float],
    image_column: str = "image",
    text_column: str = "caption",
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    flag_column: str = "is_corrupted",
    type_column: str | None = "corruption",
    duplicate_column: str | None = "duplicate_of",
    overwrite: bool = False,
) -> Dataset:
    """Apply several kinds of web noise (module docstring) to disjoint rows of an image–caption Dataset.

    ``rates`` maps kinds from `WEB_NOISE` to rates; kind ``k`` changes exactly ``round(rates[k] · N)``
    rows, and the rates may add up to at most 1. One seeded permutation of the rows is cut into
    consecutive blocks, one per kind in `WEB_NOISE` order, so the kinds never share a row;
    near-duplicate sources are drawn from the rows no kind chose (distinct while there are enough).
    Only the columns a kind needs must exist: ``text_column`` (strings) for the caption kinds and
    near-duplicates, ``image_column`` for near-duplicates and low-information images. With
    ``label_column``, mismatched captions come from images of another class (when no class holds
    over half of the chosen rows; otherwise a warning, and only the caption text is kept apart).

    Returns a new Dataset with ``flag_column`` (bool), ``type_column`` (the kind, null for clean
    rows; ``None``: not written) and, when near-duplicates are made, ``duplicate_column`` (the
    source's row position in ``dataset``, null elsewhere). Unflagged rows keep their stored bytes;
    the input is not modified; existing output columns are replaced only with ``overwrite=True``.
    ``seed`` is an integer ≥ 0 or a NumPy Generator (one draw).

    Example:
        >>> noisy = web_noise(pool, rates={"mismatch": 0.1, "uninformative": 0.05, "near_duplicate": 0.05,
        ...                                "low_information": 0.05, "wrong_language": 0.05}, seed=0)
        >>> sum(noisy["is_corrupted"]) == sum(round(r * len(pool)) for r in (0.1, 0.05, 0.05, 0.05, 0.05))
        True
    """
    rates = _check_rates(rates)
    kinds = list(rates)
    needs_text, needs_image = bool(_TEXT_KINDS & set(kinds)), bool(_IMAGE_KINDS & set(kinds))
    sources = {"text_column": text_column if needs_text else None, "image_column": image_column if needs_image else None,
               "label_column": label_column}
    sources = {k: v for k, v in sources.items() if v is not None}
    outputs = {"flag_column": flag_column, "type_column": type_column,
               "duplicate_column": duplicate_column if "near_duplicate" in rates else None}
    if len(set(v for v in outputs.values() if v is not None)) < len([v for v in outputs.values() if v is not None]):
        raise ValueError(f"`flag_column`, `type_column` and `duplicate_column` must differ, got {outputs}")
    seed = check_corruption_args(dataset, rate=0.0, seed=seed, sources=sources, outputs=outputs, overwrite=overwrite)
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    if needs_text:
        text = column_array(dataset, text_column)
        if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
            raise ValueError(f"column {text_column!r} holds {dataset.features[text_column]}; captions must be strings")
    labels = read_labels(dataset, label_column) if label_column is not None else None

    counts = {k: corrupted_count(n, rates[k]) for k in kinds}
    permutation = np.random.default_rng([seed, 0]).permutation(n)
    bounds = np.cumsum([0] + [counts[k] for k in kinds])
    if bounds[-1] > n:
        raise ValueError(f"`rates` ask for {bounds[-1]} rows of {n}")
    blocks = {k: np.sort(permutation[bounds[i] : bounds[i + 1]]) for i, k in enumerate(kinds)}
    clean = np.sort(permutation[bounds[-1] :])

    text_rows, text_values, image_rows, image_values = [], [], [], []
    copy_rows, copy_sources = np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    rngs = {kind: np.random.default_rng([seed, 1 + WEB_NOISE.index(kind)]) for kind in kinds}
    picked = np.array([], dtype=np.int64)
    if len(blocks.get("near_duplicate", ())):
        if not len(clean):
            raise ValueError("near-duplicates need clean source rows, but the rates leave none; lower `rates`")
        m = len(blocks["near_duplicate"])
        picked = rngs["near_duplicate"].choice(clean, size=m, replace=m > len(clean))
    if needs_image:
        images = column_array(dataset, image_column)
        feature = dataset.features[image_column]
        # One gather of every row an image kind reads, then zero-copy one-row slices: a take per row
        # would scan the whole column each time.
        wanted = [blocks[k] for k in ("near_duplicate", "low_information") if k in blocks]
        wanted = np.unique(np.concatenate(wanted + [picked]))
        gathered, where = images.take(pa.array(wanted)), {int(r): i for i, r in enumerate(wanted)}

        def decode(row):
            return decode_images(gathered.slice(where[row], 1), feature, image_column)[0]

    for kind in kinds:
        rows, rng = blocks[kind], rngs[kind]
        if not len(rows):
            continue
        if kind in ("mismatch", "uninformative", "wrong_language"):
            old = text.take(pa.array(rows)).to_pylist()
            if kind == "mismatch":
                new = _mismatch(old, None if labels is None else labels[rows], label_column, rng)
            else:
                make = _uninformative if kind == "uninformative" else _wrong_language
                new = [_new_caption(make, caption, rng) for caption in old]
            text_rows.append(rows)
            text_values += new
        elif kind == "low_information":
            blank = np.zeros(len(rows), dtype=bool)
            blank[rng.permutation(len(rows))[: (len(rows) + 1) // 2]] = True  # half blank, half noise
            image_rows.append(rows)
            image_values += [_low_information(decode(r), b, rng) for r, b in zip(rows.tolist(), blank.tolist())]
        else:  # near_duplicate
            source_captions = text.take(pa.array(picked)).to_pylist()
            text_rows.append(rows)
            text_values += [paraphrase(c, rng) if c is not None else "(copy)" for c in source_captions]
            image_rows.append(rows)
            for r, s in zip(rows.tolist(), picked.tolist()):
                original, source = decode(r), decode(s)
                image_values.append(_differ(_jitter(source, rng), source, original))
            copy_rows, copy_sources = rows, picked

    columns = {}
    protected = {image_column, text_column, "row_id", flag_column, type_column, duplicate_column}
    if len(copy_rows):
        order = np.arange(n, dtype=np.int64)
        order[copy_rows] = copy_sources
        for name in dataset.column_names:
            if name not in protected:
                columns[name] = (column_array(dataset, name).take(pa.array(order)), dataset.features[name])
    if text_rows:
        rows = np.concatenate(text_rows)
        columns[text_column] = (_replaced(text, rows, pa.array(text_values, type=text.type)),
                                dataset.features[text_column])
    if image_rows:
        rows = np.concatenate(image_rows)
        columns[image_column] = (_replaced(images, rows, _encode(image_values, images.type, feature)), feature)
    chosen = np.concatenate([blocks[k] for k in kinds])
    columns[flag_column] = flag_array(n, chosen)
    if type_column is not None:
        names = np.full(n, None, dtype=object)
        for kind in kinds:
            names[blocks[kind]] = kind
        columns[type_column] = (pa.array(names.tolist(), type=pa.string()), Value("string"))
    if outputs["duplicate_column"] is not None:
        duplicate = np.full(n, None, dtype=object)
        duplicate[copy_rows] = copy_sources.tolist()
        columns[duplicate_column] = (pa.array(duplicate.tolist(), type=pa.int64()), Value("int64"))
    params = {"rates": rates, "image_column": image_column, "text_column": text_column, "label_column": label_column,
              "seed": seed}
    return replace_columns(dataset, columns, method="web_noise", params=params)


def _single(kind: str, dataset: Dataset, rate: float, **kwargs) -> Dataset:
    return web_noise(dataset, rates={kind: rate}, **kwargs)


def mismatched_pairs(
    dataset: Dataset,
    *,
    rate: float,
    text_column: str = "caption",
    label_column: str | None = None,
    seed: int | np.random.Generator = 0,
    flag_column: str = "is_corrupted",
    type_column: str | None = "corruption",
    overwrite: bool = False,
) -> Dataset:
    """Permute the captions of ``round(rate · N)`` random rows so that none keeps its own (``"mismatch"``).

    The permutation is a derangement on the caption text (no row gets an identical caption back)
    and, with ``label_column``, on the labels: each caption then comes from an image of another
    class. `web_noise` with ``rates={"mismatch": rate}``.

    Example:
        >>> noisy = mismatched_pairs(pool, rate=0.2, label_column="shape", seed=0)
    """
    return _single("mismatch", dataset, rate, text_column=text_column, label_column=label_column, seed=seed,
                   flag_column=flag_column, type_column=type_column, overwrite=overwrite)


def uninformative_captions(
    dataset: Dataset,
    *,
    rate: float,
    text_column: str = "caption",
    seed: int | np.random.Generator = 0,
    flag_column: str = "is_corrupted",
    type_column: str | None = "corruption",
    overwrite: bool = False,
) -> Dataset:
    """Replace ``round(rate · N)`` random captions by file names or boilerplate (``"uninformative"``).

    Half of them on average are file names (``IMG_2041.jpg``, ``DSC_0042.JPG``, ``image (3).png``, a
    hex hash), the others boilerplate (``click here to download``, ``stock photo``, ``untitled``).

    Example:
        >>> noisy = uninformative_captions(pool, rate=0.1, seed=0)
    """
    return _single("uninformative", dataset, rate, text_column=text_column, seed=seed, flag_column=flag_column,
                   type_column=type_column, overwrite=overwrite)


def near_duplicates(
    dataset: Dataset,
    *,
    rate: float,
    image_column: str = "image",
    text_column: str = "caption",
    seed: int | np.random.Generator = 0,
    flag_column: str = "is_corrupted",
    type_column: str | None = "corruption",
    duplicate_column: str | None = "duplicate_of",
    overwrite: bool = False,
) -> Dataset:
    """Turn ``round(rate · N)`` random rows into near-copies of clean rows (``"near_duplicate"``).

    Each chosen row takes a source row's columns (all but ``row_id``), with the image jittered (a
    crop of up to 6% per side resized back, brightness and contrast × U(0.9, 1.1)) and the caption
    lightly rewritten (`paraphrase`). Sources are drawn from the unchosen rows, distinct while there
    are enough; ``duplicate_column`` holds each copy's source row position.

    Example:
        >>> noisy = near_duplicates(pool, rate=0.1, seed=0)
        >>> copies = noisy.filter(lambda r: r["is_corrupted"])
        >>> all(not noisy[s]["is_corrupted"] for s in copies["duplicate_of"])
        True
    """
    return _single("near_duplicate", dataset, rate, image_column=image_column, text_column=text_column, seed=seed,
                   flag_column=flag_column, type_column=type_column, duplicate_column=duplicate_column,
                   overwrite=overwrite)


def low_information_images(
    dataset: Dataset,
    *,
    rate: float,
    image_column: str = "image",
    seed: int | np.random.Generator = 0,
    flag_column: str = "is_corrupted",
    type_column: str | None = "corruption",
    overwrite: bool = False,
) -> Dataset:
    """Replace ``round(rate · N)`` random images by flat colours or uniform noise (``"low_information"``).

    Half of the chosen rows (rounded up) get one random colour over the whole image, the others
    uniform noise in [0, 255]; size and channels stay. Captions are untouched.

    Example:
        >>> noisy = low_information_images(pool, rate=0.1, seed=0)
    """
    return _single("low_information", dataset, rate, image_column=image_column, seed=seed, flag_column=flag_column,
                   type_column=type_column, overwrite=overwrite)


def wrong_language_captions(
    dataset: Dataset,
    *,
    rate: float,
    text_column: str = "caption",
    seed: int | np.random.Generator = 0,
    flag_column: str = "is_corrupted",
    type_column: str | None = "corruption",
    overwrite: bool = False,
) -> Dataset:
    """Replace ``round(rate · N)`` random captions by text in another language or script (``"wrong_language"``).

    A third of them on average are words from a small built-in list of another language (German,
    Spanish, French, Turkish, Russian, Greek, Chinese, Japanese, Korean, Arabic), a third
    transliterated Russian/Japanese/Chinese/Korean words, a third random Cyrillic, Greek, CJK,
    Hangul or Arabic characters. Generated offline; no translation model.

    Example:
        >>> noisy = wrong_language_captions(pool, rate=0.1, seed=0)
    """
    return _single("wrong_language", dataset, rate, text_column=text_column, seed=seed, flag_column=flag_column,
                   type_column=type_column, overwrite=overwrite)
