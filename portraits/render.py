"""The synthetic portrait world's procedural renderer (the offline default data; attributes in `attributes`).

Every image is drawn procedurally from a seed and a set of known attributes (gender, beard, glasses,
hair colour and length, skin, background, smile), so that a tokenizer and a text-conditional
transformer train on a CPU in minutes and a judge classifier can later score prompt adherence against
the attributes that were asked for.

The renderer draws soft-edged shapes in normalised coordinates ([0, 1] across the image, y down), so
any size works; every attribute is a large, high-contrast region (bold glasses rims, a beard over the
whole jaw, an open toothy smile against a closed flat mouth) so that it survives a lossy 8x8-latent
autoencoder at 64 px. Textures are deliberately smooth (no per-pixel noise, smooth lighting, 1-2 px
anti-aliased edges): the tokenizer must reconstruct these images at >= 28 dB PSNR.

Each portrait can also be seen at zoom levels 2x and 4x: the centre half and the centre quarter of the
1x view, rendered natively at full resolution (`view_window`); `visible_attributes(level)` says which
attributes each level shows.

    python -m nextscale.portraits --out grid.png --num 64            # look at samples, captions printed
    python -m nextscale.portraits --out zoom.png --num 8 --zoom 1 2 4  # each portrait at every level
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nextscale.portraits.attributes import ZOOM_LEVELS

# Named colours (RGB 0-255). Pairs that could meet (red hair on a red background, blond on yellow,
# grey on grey) are pushed apart in hue or brightness, and a soft shadow behind the head adds contrast.
_HAIR = {
    "black": (30, 26, 24),
    "brown": (110, 68, 38),
    "blond": (222, 186, 112),
    "red": (196, 88, 34),
    "grey": (186, 186, 190),
}
_SKIN = {"light": (240, 206, 180), "medium": (196, 144, 104), "dark": (112, 72, 48)}
_BACKGROUND = {
    "blue": (58, 108, 204),
    "green": (66, 158, 80),
    "red": (204, 46, 70),
    "yellow": (242, 218, 62),
    "purple": (132, 78, 176),
    "grey": (108, 110, 114),
}
_CLOTHES = ((40, 52, 90), (60, 60, 64), (225, 225, 220), (120, 36, 44), (96, 104, 52), (32, 112, 116),
            (196, 170, 130), (28, 28, 30), (170, 90, 150), (210, 120, 60))
_IRIS = ((82, 52, 30), (60, 100, 150), (70, 110, 70), (36, 28, 24))


def view_window(zoom: int) -> tuple[float, float]:
    """The world interval [low, high] (both axes, [0, 1] = the 1x view) seen at `zoom`: its centre 1/zoom.

    The centre is the image centre (0.5, 0.5), not the face's, so that a zoom stack is consistent: the
    view at 2z is exactly the centre half of the view at z, pixel-aligned (pixel 2i and 2i + 1 of the
    deeper level lie inside pixel size/4 + i of the level above).
    """
    half = 0.5 / zoom
    return 0.5 - half, 0.5 + half


def _rgb(red: int, green: int, blue: int) -> np.ndarray:
    return np.array([red, green, blue], np.float32) / 255


_LIPSTICK, _MOUTH, _TEETH = _rgb(200, 56, 72), _rgb(84, 20, 26), _rgb(242, 240, 230)
_SCLERA, _PUPIL, _LENS, _BLUSH = _rgb(242, 242, 236), _rgb(0, 0, 0), _rgb(190, 216, 242), _rgb(230, 115, 115)


def _jitter(rgb: tuple[int, ...], rng: np.random.Generator, brightness: float, tint: float) -> np.ndarray:
    """A named colour jittered a little in brightness and per channel, so the name stays right: (3,)."""
    colour = np.asarray(rgb, np.float32) * rng.uniform(1 - brightness, 1 + brightness)
    return np.clip((colour + rng.normal(0, tint, 3)) / 255, 0, 1).astype(np.float32)


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114], np.float32))


def _beard_colour(hair: np.ndarray, skin: np.ndarray) -> np.ndarray:
    """Hair colour, moved in brightness until it stands out from the skin (darker where there is room)."""
    beard, gap = hair * 0.8, 0.28
    skin_luminance, beard_luminance = _luminance(skin), _luminance(beard)
    if abs(beard_luminance - skin_luminance) >= gap:
        return beard
    if skin_luminance - gap >= 0.12 or beard_luminance < 0.45:
        target = max(skin_luminance - gap, 0.12)
    else:  # grey or blond on dark skin: lighter
        target = skin_luminance + gap
    return np.clip(beard * target / beard_luminance, 0, 1)


def _ellipse_sdf(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float | np.ndarray,
                 ry: float) -> np.ndarray:
    """Signed distance to an ellipse (negative inside), exact for circles.

    Elongated ellipses are measured on their short axis's scale, so their edges are a little softer at
    the ends of the long axis: cheaper than the exact distance, and soft edges are what we want anyway.
    """
    return (np.hypot((x - cx) / rx, (y - cy) / ry) - 1) * np.minimum(rx, ry)


class _Canvas:
    """Float RGB image in [0, 1] of a square view of the world, with soft-edged painting restricted to each
    shape's bounding box.

    The view is the centre 1/zoom of the unit square (`view_window(zoom)`): shapes are placed in world
    coordinates and every pixel samples the world at its own centre, so a zoomed view is rendered
    natively at full resolution; anti-aliased edges stay 1-2 output pixels wide at every zoom.
    """

    def __init__(self, size: int, zoom: int = 1) -> None:
        self.size, self.zoom = size, zoom
        left, _ = view_window(zoom)
        centres = left + (np.arange(size, dtype=np.float32) + 0.5) / size / np.float32(zoom)
        self.x = centres[None, :]  # (1, W)
        self.y = centres[:, None]  # (H, 1)
        self.rgb = np.zeros((size, size, 3), np.float32)

    def _pixels(self, low: float, high: float) -> slice:
        """Pixel indices covering the world interval [low, high] along one axis, padded by 2 px."""
        left, _ = view_window(self.zoom)
        scale = self.size * self.zoom
        start = min(max(math.floor((low - left) * scale) - 2, 0), self.size)
        return slice(start, min(max(math.floor((high - left) * scale) + 3, start), self.size))

    def window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[np.ndarray, np.ndarray, tuple]:
        """Pixel coordinates of a box in world coordinates (padded by 2 px): x (1, w), y (h, 1), index.

        A box outside the view gives empty arrays, and painting it does nothing."""
        cols, rows = self._pixels(x0, x1), self._pixels(y0, y1)
        return self.x[:, cols], self.y[rows], (rows, cols)

    def coverage(self, sdf: np.ndarray, soft: float = 1.2) -> np.ndarray:
        """Anti-aliased inside-ness from a signed distance (world units): a ramp `soft` output pixels wide."""
        ramp = 0.5 - sdf * (self.size * self.zoom / soft)  # world units -> output pixels
        return np.minimum(np.maximum(ramp, 0, out=ramp), 1, out=ramp)

    def paint(self, index: tuple, coverage: np.ndarray, colour: np.ndarray, alpha: float = 1.0) -> None:
        """Blend `colour` (3,) or (h, w, 3) over the window `index` with `coverage` (h, w) times `alpha`."""
        if alpha != 1.0:
            coverage = alpha * coverage
        region = self.rgb[index]
        region += coverage[..., None] * (colour - region)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, colour: np.ndarray,
                alpha: float = 1.0, soft: float = 1.2) -> None:
        x, y, index = self.window(cx - rx, cx + rx, cy - ry, cy + ry)
        self.paint(index, self.coverage(_ellipse_sdf(x, y, cx, cy, rx, ry), soft), colour, alpha)

    def box(self, x0: float, x1: float, y0: float, y1: float, colour: np.ndarray, alpha: float = 1.0) -> None:
        x, y, index = self.window(x0, x1, y0, y1)
        inside = self.coverage(np.maximum(x0 - x, x - x1)) * self.coverage(np.maximum(y0 - y, y - y1))
        self.paint(index, inside, colour, alpha)


@dataclass(frozen=True)
class _Person:
    """Everything drawn from the rng for one portrait: its geometry, colours and small jitters."""

    attributes: Mapping[str, str]
    scale: float
    cx: float
    cy: float
    rx: float
    """Face half-width."""
    ry: float
    """Face half-height."""
    skin: np.ndarray
    hair: np.ndarray
    background: np.ndarray
    clothes: np.ndarray
    iris: np.ndarray
    frame: np.ndarray
    gaze: float
    beard_shift: float
    hair_shift: float
    hairline_shift: float
    parting: float
    light_x: float
    light_y: float

    @property
    def man(self) -> bool:
        return self.attributes["gender"] == "man"

    @property
    def long_hair(self) -> bool:
        return self.attributes["hair_length"] == "long"

    @property
    def eye_y(self) -> float:
        return self.cy - 0.03 * self.scale

    @property
    def eye_dx(self) -> float:
        return 0.075 * self.scale


def _draw_person(attributes: Mapping[str, str], rng: np.random.Generator) -> _Person:
    """Every draw happens here whatever the attributes, so that with the same rng, changing one attribute
    changes only its own feature (glasses, smile and beard edits are local)."""
    man = attributes["gender"] == "man"
    scale = rng.uniform(0.94, 1.06)
    cx, cy = 0.5 + rng.uniform(-0.03, 0.03), 0.44 + rng.uniform(-0.025, 0.025)
    rx = 0.175 * scale * (1.05 if man else 0.96) * rng.uniform(0.96, 1.04)
    ry = 0.235 * scale * rng.uniform(0.97, 1.03)
    skin = _jitter(_SKIN[attributes["skin"]], rng, 0.05, 5)
    hair = _jitter(_HAIR[attributes["hair_color"]], rng, 0.08, 5 if attributes["hair_color"] != "grey" else 1)
    background = _jitter(_BACKGROUND[attributes["background"]], rng, 0.07, 7)
    clothes = _jitter(_CLOTHES[rng.integers(len(_CLOTHES))], rng, 0.1, 10)
    iris = _jitter(_IRIS[rng.integers(len(_IRIS))], rng, 0.05, 4)
    frame = _jitter((26, 24, 28), rng, 0.1, 3)
    jitter = rng.uniform(-1, 1, 5) * (0.006, 0.012, 0.05, 0.015, 0.03)
    long_hair = attributes["hair_length"] == "long"
    gaze, beard_shift, hair_shift, hairline_shift, parting = jitter if long_hair else (*jitter[:4], 0.0)
    light_x, light_y = rng.uniform(-0.18, 0.18, 2)
    return _Person(attributes, scale, cx, cy, rx, ry, skin, hair, background, clothes, iris, frame, gaze,
                   beard_shift, hair_shift, hairline_shift, parting, light_x, light_y)


def _paint_behind(canvas: _Canvas, p: _Person) -> None:
    """Background with the head's shadow, long hair, clothes, neck and ears."""
    cx, cy, rx, ry, scale = p.cx, p.cy, p.rx, p.ry, p.scale
    # Background: vertical gradient plus a soft shadow of the head cast behind it.
    shadow = np.clip(1 - _ellipse_sdf(canvas.x, canvas.y, cx + 0.02, cy + 0.02, rx * 1.6, ry * 1.4) / 0.12, 0, 1)
    canvas.rgb[:] = p.background * ((1.08 - 0.16 * canvas.y) * (1 - 0.3 * shadow))[..., None]
    if p.long_hair:  # falls behind the face down to the shoulders
        hx0, hx1, top = cx - rx * 1.32, cx + rx * 1.32, cy - ry * 1.1
        bottom = cy + ry * 1.6 * (1 + p.hair_shift)
        wx, wy, index = canvas.window(hx0, hx1, top, bottom)
        crown = canvas.coverage(_ellipse_sdf(wx, wy, cx, cy - 0.02, rx * 1.32, ry * 1.1))
        fall = canvas.coverage(np.maximum(np.maximum(hx0 - wx, wx - hx1), np.maximum(cy - wy, wy - bottom)))
        canvas.paint(index, np.maximum(crown, fall), p.hair * 0.85)
    shoulders = (0.40 if p.man else 0.34) * scale
    canvas.ellipse(cx, 1.12, shoulders, 0.30, p.clothes)
    neck = p.skin * 0.82
    canvas.box(cx - 0.07 * scale, cx + 0.07 * scale, cy + 0.1, 0.86, neck)
    if not p.man:  # scoop neckline
        canvas.ellipse(cx, 0.83, 0.09 * scale, 0.055, neck)
    for side in (-1, 1):
        canvas.ellipse(cx + side * rx * 0.97, cy + 0.005, 0.032 * scale, 0.05 * scale, p.skin * 0.9)


def _paint_face(canvas: _Canvas, p: _Person) -> None:
    """An ellipse whose lower half narrows (a pointier chin for women), shaded darker at the rim; the beard."""
    cx, cy, rx, ry = p.cx, p.cy, p.rx, p.ry
    taper = 0.12 if p.man else 0.24
    wx, wy, index = canvas.window(cx - rx, cx + rx, cy - ry, cy + ry)
    below = np.clip((wy - cy) / ry, 0, 1)
    face_sdf = _ellipse_sdf(wx, wy, cx, cy, rx * (1 - taper * below * below), ry)
    rim = np.clip(((wx - cx) / rx) ** 2 + ((wy - cy) / ry) ** 2, 0, 1)
    canvas.paint(index, canvas.coverage(face_sdf), p.skin * (1.04 - 0.12 * rim)[..., None])
    if not p.man:  # blush
        for side in (-1, 1):
            canvas.ellipse(cx + side * rx * 0.55, cy + 0.06, 0.04, 0.025, _BLUSH, 0.25, 3)
    if p.attributes["beard"] == "yes":  # over jaw and chin, up the cheeks to sideburns, moustache included
        top = cy + 0.055 * p.scale + p.beard_shift
        wx, wy, index = canvas.window(cx - rx * 1.08, cx + rx * 1.08, cy - ry, cy + ry * 1.12)
        chin = canvas.coverage(_ellipse_sdf(wx, wy, cx, cy + 0.012, rx * 1.07, ry * 1.06), 1.6)
        line = canvas.coverage(top - 0.11 * ((wx - cx) / rx) ** 2 - wy, 1.6)
        canvas.paint(index, chin * line, _beard_colour(p.hair, p.skin))


def _paint_mouth_and_nose(canvas: _Canvas, p: _Person) -> None:
    """A smile (open crescent with teeth) or a closed mouth; the nose's shadow and tip."""
    cx, cy, scale = p.cx, p.cy, p.scale
    mouth_y = cy + 0.125 * scale
    lips = _LIPSTICK if not p.man else p.skin * _rgb(200, 148, 148)
    half = 0.08 * scale
    wx, wy, index = canvas.window(cx - half - 0.01, cx + half + 0.01, mouth_y - 0.05, mouth_y + 0.06)
    t2 = ((wx - cx) / half) ** 2
    across = canvas.coverage(np.abs(wx - cx) - half)
    if p.attributes["smile"] == "yes":  # open crescent: corners up, teeth along the top, dark below
        upper = mouth_y - 0.008 - 0.03 * t2
        lower = mouth_y + 0.056 * (1 - t2) - 0.03 * t2
        canvas.paint(index, canvas.coverage(upper - 0.008 - wy) * canvas.coverage(wy - lower - 0.008)
                     * canvas.coverage(np.abs(wx - cx) - half - 0.008), lips)
        inside = across * canvas.coverage(upper - wy) * canvas.coverage(wy - lower)
        canvas.paint(index, inside, _MOUTH)
        canvas.paint(index, inside * canvas.coverage(wy - upper - 0.02), _TEETH)
    else:  # closed, flat: lips then a dark parting line
        canvas.ellipse(cx, mouth_y, half * 0.75, 0.016 if p.man else 0.022, lips)
        canvas.box(cx - half * 0.72, cx + half * 0.72, mouth_y - 0.006, mouth_y + 0.006, lips * 0.55)
    canvas.ellipse(cx + 0.004, cy + 0.05 * scale, 0.02 * scale, 0.045 * scale, p.skin * 0.75, 0.35, 2.5)
    canvas.ellipse(cx, cy + 0.083 * scale, 0.026 * scale, 0.011 * scale, p.skin * 0.6, 0.6, 1.5)


def _paint_eyes(canvas: _Canvas, p: _Person) -> None:
    """Lids, sclera, iris and pupil, and an arched brow over each eye."""
    scale, eye_y = p.scale, p.eye_y
    brow = p.hair * 0.7 if p.attributes["hair_color"] != "black" else p.hair
    for side in (-1, 1):
        ex = p.cx + side * p.eye_dx
        lid = 0.006 if p.man else 0.012  # eyeliner: a thicker dark upper lid on women
        canvas.ellipse(ex, eye_y - lid / 2, 0.034 * scale + lid / 2, 0.019 * scale + lid / 2, p.skin * 0.3)
        canvas.ellipse(ex, eye_y, 0.032 * scale, 0.018 * scale, _SCLERA)
        canvas.ellipse(ex + p.gaze, eye_y, 0.015 * scale, 0.015 * scale, p.iris)
        canvas.ellipse(ex + p.gaze, eye_y, 0.007 * scale, 0.007 * scale, _PUPIL)
        # Arched brow: a bar whose centre line bends up in the middle.
        brow_w, brow_h = 0.042 * scale, (0.012 if p.man else 0.008) * scale
        brow_y = eye_y - 0.048 * scale
        wx, wy, index = canvas.window(ex - brow_w, ex + brow_w, brow_y - 0.02, brow_y + 0.03)
        bend = brow_y + 0.012 * ((wx - ex) / brow_w) ** 2
        bar = canvas.coverage(np.abs(wx - ex) - brow_w) * canvas.coverage(np.abs(wy - bend) - brow_h)
        canvas.paint(index, bar, brow)


def _paint_top(canvas: _Canvas, p: _Person) -> None:
    """Top hair (a cap down to a hairline that dips towards the temples), then glasses."""
    cx, cy, rx, ry, scale, eye_y, eye_dx = p.cx, p.cy, p.rx, p.ry, p.scale, p.eye_y, p.eye_dx
    hairline = cy - ry * (0.52 if p.long_hair else 0.56) + p.hairline_shift
    wx, wy, index = canvas.window(cx - rx * 1.14, cx + rx * 1.14, cy - ry * 1.2, cy + 0.02)
    side = (wx - cx) / rx
    cap = canvas.coverage(_ellipse_sdf(wx, wy, cx, cy - 0.02 * scale, rx * 1.12, ry * 1.07))
    edge = canvas.coverage(wy - (hairline + 0.075 * side * side + p.parting * side), 1.5)
    canvas.paint(index, cap * edge, p.hair)
    if p.attributes["glasses"] != "yes":
        return
    rim_x, rim_y, thick = 0.056 * scale, 0.042 * scale, 0.034 * scale  # bold dark rims, bridge and temples
    for side in (-1, 1):
        ex = cx + side * eye_dx
        wx, wy, index = canvas.window(ex - rim_x - thick, ex + rim_x + thick, eye_y - rim_y - thick,
                                      eye_y + rim_y + thick)
        sdf = _ellipse_sdf(wx, wy, ex, eye_y + 0.003, rim_x, rim_y)
        canvas.paint(index, canvas.coverage(sdf), _LENS, 0.2)
        canvas.paint(index, canvas.coverage(np.abs(sdf) - thick / 2), p.frame)
        rim_edge, face_edge = ex + side * rim_x, cx + side * rx  # the temple arm between them
        left, right = sorted((rim_edge, face_edge))
        canvas.box(left, right, eye_y - 0.026, eye_y - 0.008, p.frame)
    canvas.box(cx - eye_dx + rim_x, cx + eye_dx - rim_x, eye_y - 0.022, eye_y - 0.002, p.frame)


_HAT = {"red": (204, 36, 44), "blue": (36, 64, 200), "green": (40, 150, 64)}
_HAT_BAND = _rgb(24, 22, 26)


def _paint_hat(canvas: _Canvas, p: _Person, colour: str) -> None:
    """A brimmed hat over the top hair (concept `hat`; no rng draw: the person's geometry decides it)."""
    cx, cy, rx, ry = p.cx, p.cy, p.rx, p.ry
    fill = _rgb(*_HAT[colour])
    brim_y = cy - ry * 0.7
    canvas.box(cx - rx * 0.82, cx + rx * 0.82, cy - ry * 1.42, brim_y, fill)
    canvas.box(cx - rx * 0.82, cx + rx * 0.82, brim_y - ry * 0.16, brim_y - ry * 0.05, _HAT_BAND)
    canvas.ellipse(cx, brim_y, rx * 1.38, ry * 0.11, fill * 0.85)


def render_portrait(attributes: Mapping[str, str], size: int, rng: np.random.Generator,
                    zoom: int = 1, concepts: Mapping[str, str] | None = None) -> np.ndarray:
    """Draw one portrait with the given (complete) attributes, seen at `zoom` (1, 2 or 4): uint8 (size, size, 3).

    The portrait is a pure function of (attributes, rng state), whatever the zoom: the same rng state
    gives the same person at every level, and each level is the centre half of the one before, rendered
    at full resolution (`view_window`). Layers back to front: background and head shadow, long hair,
    clothes, neck, ears, face, beard, mouth, nose, eyes, brows, top hair, glasses, then one smooth
    lighting gradient over everything. `concepts` (`nextscale.portraits.concepts`) adds layers above the
    glasses (a hat) without drawing from `rng`, so a portrait without them is unchanged.
    """
    if zoom not in ZOOM_LEVELS:
        raise ValueError(f"zoom must be one of {ZOOM_LEVELS}, got {zoom}")
    canvas = _Canvas(size, zoom)
    person = _draw_person(attributes, rng)
    for layer in (_paint_behind, _paint_face, _paint_mouth_and_nose, _paint_eyes, _paint_top):
        layer(canvas, person)
    if concepts and concepts.get("hat", "no") != "no":
        _paint_hat(canvas, person, concepts["hat"])
    lighting = 255 * (1 + person.light_x * (canvas.x - 0.5) + person.light_y * (canvas.y - 0.5))
    canvas.rgb *= lighting[..., None]
    canvas.rgb += 0.5  # round, not truncate, below
    return np.clip(canvas.rgb, 0, 255, out=canvas.rgb).astype(np.uint8)
