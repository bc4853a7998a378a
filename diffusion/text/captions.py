"""Captions from data: the class and attributes measured on each image, phrased through templates.

Every measurement reads intensities u ∈ [0, 1] (uint8 / 255, or (x + 1)/2 for model-range
samples in [−1, 1]) of one-channel images, and the same functions check generated samples
(``attribute_accuracy``). Rows r grow downwards, columns c to the right.

  * ink: pixels with u > ``INK`` (0.5); for Fashion-MNIST the object is u > ``OBJECT`` (0.1).
  * stroke thickness w: the ink as a ribbon of width w and length ℓ with the same area
    A = wℓ (ink pixels) and perimeter P = 2(w + ℓ) (ink/background pixel edges, the image
    border counting as background), so w = P/4 − √((P/4)² − A): exact for an axis-aligned bar,
    and the root is real for every pixel set (P/2 ≥ h + w of each component's bounding box).
  * slant s = −μ₁₁/μ₀₂ with the intensity-weighted central moments μ₁₁ = Σ u (r − r̄)(c − c̄),
    μ₀₂ = Σ u (r − r̄)²: the columns gained per row upwards (the shear LeCun-style deskewing
    removes); s = tan θ for a bar leaning θ to the right.
  * size: the bounding box of the ink (object) in pixels, height × width.
  * shade (Fashion-MNIST): the mean intensity over the object.

Buckets: thin if w < 2 px, else thick (2.0 is about the MNIST median); left-slanted if s < −0.2,
right-slanted if s > 0.2 (|θ| > 11.3°), else upright; small if the box area is below the
median of its class on the data (``SIZE_MEDIANS``, measured once on the embedded MNIST 10k and all
70k Fashion-MNIST images: a "1" is narrower than a "0", so size is judged within the class),
else large; dark if the shade is below 0.65 (the Fashion-MNIST median), else light.
"""
from __future__ import annotations

import itertools
import string

import numpy as np

from diffusion.text.tokenizer import split_words

INK, OBJECT = 0.5, 0.1
THICK, SLANT, LIGHT = 2.0, 0.2, 0.65
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot")
SIZE_MEDIANS = {"mnist": (340, 160, 340, 320, 320, 320, 280, 300, 300, 260),
                "fashion_mnist": (616, 308, 588, 420, 560, 420, 588, 364, 588, 588)}
ATTRIBUTES = {"mnist": ("thickness", "slant", "size"), "fashion_mnist": ("size", "shade")}
WORDS = {"thickness": ("thin", "thick"), "slant": ("left-slanted", "upright", "right-slanted"),
         "size": ("small", "large"), "shade": ("dark", "light")}
# {name}: the class as a word, {label}: as a digit; then one field per attribute.
TEMPLATES = {
    "mnist": ("a {thickness}, {slant} {name}", "the digit {label}, {thickness}", "a {size} {name}",
              "a {size}, {thickness} {name}, {slant}", "the digit {label}, {slant} and {size}",
              "a {slant} {name}"),
    "fashion_mnist": ("a {size}, {shade} {name}", "a {shade} {name}", "a photo of a {size} {name}",
                      "a {name}, {size} and {shade}"),
}
CLASS_PROMPTS = {"mnist": "the digit {label}", "fashion_mnist": "a {name}"}
DOMAINS = tuple(TEMPLATES)


def _check_domain(domain: str):
    if domain not in TEMPLATES:
        raise ValueError(f"unknown caption domain {domain!r}; choose one of {list(DOMAINS)}")


def class_names(domain: str) -> tuple[str, ...]:
    _check_domain(domain)
    return NUMBER_WORDS if domain == "mnist" else FASHION_NAMES


def unit_intensity(images) -> np.ndarray:
    """float64 [N, H, W] in [0, 1] from uint8 [N, H, W, 1] or model-range floats in [−1, 1]."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"attributes are measured on one-channel images [N, H, W, 1], got {images.shape}")
    u = images[..., 0].astype(np.float64)
    return u / 255.0 if images.dtype == np.uint8 else np.clip((u + 1.0) / 2.0, 0.0, 1.0)


def stroke_thickness(images) -> np.ndarray:
    """w = P/4 − √((P/4)² − A) per image [N] (0 for an empty image); see the module docstring."""
    ink = unit_intensity(images) > INK
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    perimeter = ((padded[:, 1:] != padded[:, :-1]).sum((1, 2)) + (padded[:, :, 1:] != padded[:, :, :-1]).sum((1, 2)))
    area = ink.sum((1, 2))
    q = perimeter / 4.0
    return q - np.sqrt(np.maximum(q * q - area, 0.0))


def slant(images) -> np.ndarray:
    """s = −μ₁₁/μ₀₂ per image [N] (0 for an empty image or a single row)."""
    u = unit_intensity(images)
    rows = np.arange(u.shape[1])[None, :, None]
    cols = np.arange(u.shape[2])[None, None, :]
    mass = np.maximum(u.sum((1, 2)), 1e-12)[:, None, None]
    dr = rows - (u * rows).sum((1, 2))[:, None, None] / mass
    dc = cols - (u * cols).sum((1, 2))[:, None, None] / mass
    mu11, mu02 = (u * dr * dc).sum((1, 2)), (u * dr * dr).sum((1, 2))
    return np.where(mu02 > 1e-12, -mu11 / np.maximum(mu02, 1e-12), 0.0)


def box_area(images, level: float = INK) -> np.ndarray:
    """Height × width of the bounding box of the pixels above ``level`` [N] (0 when none)."""
    mask = unit_intensity(images) > level
    extent = lambda any_: np.where(any_.any(1), any_.shape[1] - np.argmax(any_[:, ::-1], 1) - np.argmax(any_, 1), 0)
    return extent(mask.any(2)) * extent(mask.any(1))


def shade(images) -> np.ndarray:
    """Mean intensity over the object (pixels above ``OBJECT``) [N] (0 when none)."""
    u = unit_intensity(images)
    mask = u > OBJECT
    return (u * mask).sum((1, 2)) / np.maximum(mask.sum((1, 2)), 1)


def describe(domain: str, images, labels) -> dict[str, np.ndarray]:
    """Each attribute of ``domain`` as a word per image: {attribute: str [N]}. ``labels`` int [N]
    (the class whose median size judges small/large)."""
    labels, n = np.asarray(labels), len(class_names(domain))
    if labels.shape != (len(images),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= n:
        raise ValueError(f"labels must be one class in [0, {n}) per image ({len(images)}), got {labels.shape}")
    pick = lambda attribute, index: np.asarray(WORDS[attribute])[index]
    level = INK if domain == "mnist" else OBJECT
    words = {"size": pick("size", (box_area(images, level) >= np.asarray(SIZE_MEDIANS[domain])[labels]).astype(int))}
    if domain == "mnist":
        s = slant(images)
        words["thickness"] = pick("thickness", (stroke_thickness(images) >= THICK).astype(int))
        words["slant"] = pick("slant", np.where(s < -SLANT, 0, np.where(s > SLANT, 2, 1)))
    else:
        words["shade"] = pick("shade", (shade(images) >= LIGHT).astype(int))
    return {a: words[a] for a in ATTRIBUTES[domain]}


def candidate_captions(domain: str, images, labels) -> list[list[str]]:
    """Every template's caption of every image: [N][K] strings, K = len(TEMPLATES[domain])."""
    words = describe(domain, images, labels)
    names = class_names(domain)
    return [[t.format(name=names[y], label=y, **{a: words[a][i] for a in words}) for t in TEMPLATES[domain]]
            for i, y in enumerate(np.asarray(labels))]


def captions(domain: str, images, labels, seed: int) -> list[str]:
    """One caption per image, its template drawn with ``seed`` (the same captions for the same seed)."""
    candidates = candidate_captions(domain, images, labels)
    choice = np.random.default_rng(seed).integers(len(TEMPLATES[domain]), size=len(candidates))
    return [c[k] for c, k in zip(candidates, choice)]


def every_caption(domain: str) -> list[str]:
    """Every caption the templates of ``domain`` can phrase (each template with every class and
    attribute word it names): a vocabulary built from these is a function of the domain alone."""
    names = class_names(domain)
    out = []
    for template in TEMPLATES[domain]:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
        attributes = [a for a in fields if a in WORDS]
        for k, words in itertools.product(range(len(names)), itertools.product(*(WORDS[a] for a in attributes))):
            out.append(template.format(name=names[k], label=k, **dict(zip(attributes, words))))
    return out


def class_prompts(domain: str) -> list[str]:
    """The zero-shot prompt of each class ("the digit 7", "a trouser")."""
    return [CLASS_PROMPTS[domain].format(name=n, label=k) for k, n in enumerate(class_names(domain))]


def prompt_class(domain: str, prompt: str) -> int:
    """The class a prompt names (MNIST: a number word or digit; Fashion-MNIST: a class name);
    refused when it names none or several."""
    words = split_words(prompt)
    found = set()
    for k, name in enumerate(class_names(domain)):
        name_words = split_words(name)
        spans = [words[i:i + len(name_words)] for i in range(len(words))]
        if name_words in spans or (domain == "mnist" and str(k) in words):
            found.add(k)
    if len(found) != 1:
        what = "no class" if not found else f"several classes {sorted(found)}"
        raise ValueError(f"prompt {prompt!r} names {what} of {domain}; name exactly one of {list(class_names(domain))}"
                         + (" (or a digit 0-9)" if domain == "mnist" else ""))
    return found.pop()


def requested_attributes(domain: str, prompt: str) -> dict[str, str]:
    """{attribute: word} for each attribute word in ``prompt``."""
    words = set(split_words(prompt))
    return {a: w for a in ATTRIBUTES[domain] for w in WORDS[a] if w in words}


def attribute_accuracy(domain: str, images, prompts) -> dict[str, float]:
    """The share of samples showing each attribute their prompt asks for, measured as the captions
    are (size within the prompt's class), and over all requested attributes ("all"); NaN for an
    attribute no prompt asks for. ``images`` [N, H, W, 1], ``prompts`` N strings."""
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts for {len(images)} images: give one prompt per image")
    measured = describe(domain, images, [prompt_class(domain, p) for p in prompts])
    hits = {a: [] for a in ATTRIBUTES[domain]}
    for i, prompt in enumerate(prompts):
        for a, word in requested_attributes(domain, prompt).items():
            hits[a].append(measured[a][i] == word)
    out = {a: float(np.mean(h)) if h else float("nan") for a, h in hits.items()}
    every = [x for h in hits.values() for x in h]
    out["all"] = float(np.mean(every)) if every else float("nan")
    return out
