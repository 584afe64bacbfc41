"""The synthetic portrait world: attributes and the procedural renderer (the offline default data).

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

    python -m nextscale.data --out grid.png --num 64            # look at samples, captions printed
    python -m nextscale.data --out zoom.png --num 8 --zoom 1 2 4  # each portrait at every level
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gender": ("man", "woman"),
    "beard": ("yes", "no"),
    "glasses": ("yes", "no"),
    "hair_color": ("black", "brown", "blond", "red", "grey"),
    "hair_length": ("short", "long"),
    "skin": ("light", "medium", "dark"),
    "background": ("blue", "green", "red", "yellow", "purple", "grey"),
    "smile": ("yes", "no"),
}

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


# Zoom levels: level z shows the centre 1/z of the portrait (side and area), rendered natively.
ZOOM_LEVELS: tuple[int, ...] = (1, 2, 4)

# What each level shows: the whole portrait at 1x; at 2x the face with the top of the hair, long hair
# falling beside the cheeks and background in the corners (everything); at 4x eyes, brows, nose, mouth
# and the middle of the cheeks and jaw. At 4x the background and long hair show at most as slivers in
# the corners (about 1% and 2% of the pixels on average), and the hair colour only in the brows (often
# under glasses rims) and the top corners: not readable on every portrait, so not counted as visible.
_VISIBLE: dict[int, tuple[str, ...]] = {
    1: tuple(ATTRIBUTES),
    2: tuple(ATTRIBUTES),
    4: ("gender", "beard", "glasses", "skin", "smile"),
}


def visible_attributes(level: int) -> tuple[str, ...]:
    """The attributes a portrait seen at zoom `level` (1, 2 or 4) shows, in the order of `ATTRIBUTES`."""
    if level not in _VISIBLE:
        raise ValueError(f"zoom level must be one of {ZOOM_LEVELS}, got {level}")
    return _VISIBLE[level]


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


def sample_attributes(rng: np.random.Generator) -> dict[str, str]:
    """Draw one portrait's attributes; beards only on men, long hair mostly on women."""
    gender = "man" if rng.random() < 0.5 else "woman"
    long_hair_probability = 0.8 if gender == "woman" else 0.2
    return {
        "gender": gender,
        "beard": "yes" if gender == "man" and rng.random() < 0.5 else "no",
        "glasses": "yes" if rng.random() < 0.4 else "no",
        "hair_color": str(rng.choice(ATTRIBUTES["hair_color"])),
        "hair_length": "long" if rng.random() < long_hair_probability else "short",
        "skin": str(rng.choice(ATTRIBUTES["skin"])),
        "background": str(rng.choice(ATTRIBUTES["background"])),
        "smile": "yes" if rng.random() < 0.5 else "no",
    }


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


def render_portrait(attributes: Mapping[str, str], size: int, rng: np.random.Generator,
                    zoom: int = 1) -> np.ndarray:
    """Draw one portrait with the given (complete) attributes, seen at `zoom` (1, 2 or 4): uint8 (size, size, 3).

    The portrait is a pure function of (attributes, rng state), whatever the zoom: the same rng state
    gives the same person at every level, and each level is the centre half of the one before, rendered
    at full resolution (`view_window`). Layers back to front: background and head shadow, long hair,
    clothes, neck, ears, face, beard, mouth, nose, eyes, brows, top hair, glasses, then one smooth
    lighting gradient over everything.
    """
    man = attributes["gender"] == "man"
    long_hair = attributes["hair_length"] == "long"
    if zoom not in ZOOM_LEVELS:
        raise ValueError(f"zoom must be one of {ZOOM_LEVELS}, got {zoom}")
    canvas = _Canvas(size, zoom)
    x, y = canvas.x, canvas.y

    scale = rng.uniform(0.94, 1.06)
    cx, cy = 0.5 + rng.uniform(-0.03, 0.03), 0.44 + rng.uniform(-0.025, 0.025)
    rx = 0.175 * scale * (1.05 if man else 0.96) * rng.uniform(0.96, 1.04)  # face half-width
    ry = 0.235 * scale * rng.uniform(0.97, 1.03)  # face half-height
    skin = _jitter(_SKIN[attributes["skin"]], rng, 0.05, 5)
    hair = _jitter(_HAIR[attributes["hair_color"]], rng, 0.08, 5 if attributes["hair_color"] != "grey" else 1)
    background = _jitter(_BACKGROUND[attributes["background"]], rng, 0.07, 7)
    clothes = _jitter(_CLOTHES[rng.integers(len(_CLOTHES))], rng, 0.1, 10)
    iris = _jitter(_IRIS[rng.integers(len(_IRIS))], rng, 0.05, 4)
    frame = _jitter((26, 24, 28), rng, 0.1, 3)
    # Every draw happens up here whatever the attributes, so that with the same rng, changing one
    # attribute changes only its own feature (glasses, smile and beard edits are local).
    jitter = rng.uniform(-1, 1, 5) * (0.006, 0.012, 0.05, 0.015, 0.03)
    gaze, beard_shift, hair_shift, hairline_shift, parting = jitter if long_hair else (*jitter[:4], 0.0)
    light_x, light_y = rng.uniform(-0.18, 0.18, 2)

    # Background: vertical gradient plus a soft shadow of the head cast behind it.
    shadow = np.clip(1 - _ellipse_sdf(x, y, cx + 0.02, cy + 0.02, rx * 1.6, ry * 1.4) / 0.12, 0, 1)
    canvas.rgb[:] = background * ((1.08 - 0.16 * y) * (1 - 0.3 * shadow))[..., None]

    if long_hair:  # falls behind the face down to the shoulders
        hx0, hx1, top = cx - rx * 1.32, cx + rx * 1.32, cy - ry * 1.1
        bottom = cy + ry * 1.6 * (1 + hair_shift)
        wx, wy, index = canvas.window(hx0, hx1, top, bottom)
        crown = canvas.coverage(_ellipse_sdf(wx, wy, cx, cy - 0.02, rx * 1.32, ry * 1.1))
        fall = canvas.coverage(np.maximum(np.maximum(hx0 - wx, wx - hx1), np.maximum(cy - wy, wy - bottom)))
        canvas.paint(index, np.maximum(crown, fall), hair * 0.85)

    shoulders = (0.40 if man else 0.34) * scale
    canvas.ellipse(cx, 1.12, shoulders, 0.30, clothes)
    neck = skin * 0.82
    canvas.box(cx - 0.07 * scale, cx + 0.07 * scale, cy + 0.1, 0.86, neck)
    if not man:  # scoop neckline
        canvas.ellipse(cx, 0.83, 0.09 * scale, 0.055, neck)
    for side in (-1, 1):
        canvas.ellipse(cx + side * rx * 0.97, cy + 0.005, 0.032 * scale, 0.05 * scale, skin * 0.9)

    # Face: an ellipse whose lower half narrows (a pointier chin for women), shaded darker at the rim.
    taper = 0.12 if man else 0.24
    wx, wy, index = canvas.window(cx - rx, cx + rx, cy - ry, cy + ry)
    below = np.clip((wy - cy) / ry, 0, 1)
    face_sdf = _ellipse_sdf(wx, wy, cx, cy, rx * (1 - taper * below * below), ry)
    rim = np.clip(((wx - cx) / rx) ** 2 + ((wy - cy) / ry) ** 2, 0, 1)
    canvas.paint(index, canvas.coverage(face_sdf), skin * (1.04 - 0.12 * rim)[..., None])
    if not man:  # blush
        for side in (-1, 1):
            canvas.ellipse(cx + side * rx * 0.55, cy + 0.06, 0.04, 0.025, _BLUSH, 0.25, 3)

    mouth_y = cy + 0.125 * scale
    if attributes["beard"] == "yes":  # over jaw and chin, up the cheeks to sideburns, moustache included
        top = cy + 0.055 * scale + beard_shift
        wx, wy, index = canvas.window(cx - rx * 1.08, cx + rx * 1.08, cy - ry, cy + ry * 1.12)
        chin = canvas.coverage(_ellipse_sdf(wx, wy, cx, cy + 0.012, rx * 1.07, ry * 1.06), 1.6)
        line = canvas.coverage(top - 0.11 * ((wx - cx) / rx) ** 2 - wy, 1.6)
        canvas.paint(index, chin * line, _beard_colour(hair, skin))

    lips = _LIPSTICK if not man else skin * _rgb(200, 148, 148)
    half = 0.08 * scale
    wx, wy, index = canvas.window(cx - half - 0.01, cx + half + 0.01, mouth_y - 0.05, mouth_y + 0.06)
    t2 = ((wx - cx) / half) ** 2
    across = canvas.coverage(np.abs(wx - cx) - half)
    if attributes["smile"] == "yes":  # open crescent: corners up, teeth along the top, dark below
        upper = mouth_y - 0.008 - 0.03 * t2
        lower = mouth_y + 0.056 * (1 - t2) - 0.03 * t2
        canvas.paint(index, canvas.coverage(upper - 0.008 - wy) * canvas.coverage(wy - lower - 0.008)
                     * canvas.coverage(np.abs(wx - cx) - half - 0.008), lips)
        inside = across * canvas.coverage(upper - wy) * canvas.coverage(wy - lower)
        canvas.paint(index, inside, _MOUTH)
        canvas.paint(index, inside * canvas.coverage(wy - upper - 0.02), _TEETH)
    else:  # closed, flat: lips then a dark parting line
        canvas.ellipse(cx, mouth_y, half * 0.75, 0.016 if man else 0.022, lips)
        canvas.box(cx - half * 0.72, cx + half * 0.72, mouth_y - 0.006, mouth_y + 0.006, lips * 0.55)

    canvas.ellipse(cx + 0.004, cy + 0.05 * scale, 0.02 * scale, 0.045 * scale, skin * 0.75, 0.35, 2.5)
    canvas.ellipse(cx, cy + 0.083 * scale, 0.026 * scale, 0.011 * scale, skin * 0.6, 0.6, 1.5)

    eye_y, eye_dx = cy - 0.03 * scale, 0.075 * scale
    brow = hair * 0.7 if attributes["hair_color"] != "black" else hair
    for side in (-1, 1):
        ex = cx + side * eye_dx
        lid = 0.006 if man else 0.012  # eyeliner: a thicker dark upper lid on women
        canvas.ellipse(ex, eye_y - lid / 2, 0.034 * scale + lid / 2, 0.019 * scale + lid / 2, skin * 0.3)
        canvas.ellipse(ex, eye_y, 0.032 * scale, 0.018 * scale, _SCLERA)
        canvas.ellipse(ex + gaze, eye_y, 0.015 * scale, 0.015 * scale, iris)
        canvas.ellipse(ex + gaze, eye_y, 0.007 * scale, 0.007 * scale, _PUPIL)
        # Arched brow: a bar whose centre line bends up in the middle.
        brow_w, brow_h = 0.042 * scale, (0.012 if man else 0.008) * scale
        brow_y = eye_y - 0.048 * scale
        wx, wy, index = canvas.window(ex - brow_w, ex + brow_w, brow_y - 0.02, brow_y + 0.03)
        bend = brow_y + 0.012 * ((wx - ex) / brow_w) ** 2
        bar = canvas.coverage(np.abs(wx - ex) - brow_w) * canvas.coverage(np.abs(wy - bend) - brow_h)
        canvas.paint(index, bar, brow)

    # Top hair: a cap over the head down to a hairline that dips towards the temples.
    hairline = cy - ry * (0.52 if long_hair else 0.56) + hairline_shift
    wx, wy, index = canvas.window(cx - rx * 1.14, cx + rx * 1.14, cy - ry * 1.2, cy + 0.02)
    side = (wx - cx) / rx
    cap = canvas.coverage(_ellipse_sdf(wx, wy, cx, cy - 0.02 * scale, rx * 1.12, ry * 1.07))
    edge = canvas.coverage(wy - (hairline + 0.075 * side * side + parting * side), 1.5)
    canvas.paint(index, cap * edge, hair)

    if attributes["glasses"] == "yes":  # bold dark rims (~2.5 px at 64), bridge and temples
        rim_x, rim_y, thick = 0.056 * scale, 0.042 * scale, 0.034 * scale
        for side in (-1, 1):
            ex = cx + side * eye_dx
            wx, wy, index = canvas.window(ex - rim_x - thick, ex + rim_x + thick, eye_y - rim_y - thick,
                                          eye_y + rim_y + thick)
            sdf = _ellipse_sdf(wx, wy, ex, eye_y + 0.003, rim_x, rim_y)
            canvas.paint(index, canvas.coverage(sdf), _LENS, 0.2)
            canvas.paint(index, canvas.coverage(np.abs(sdf) - thick / 2), frame)
            rim_edge, face_edge = ex + side * rim_x, cx + side * rx  # the temple arm between them
            left, right = sorted((rim_edge, face_edge))
            canvas.box(left, right, eye_y - 0.026, eye_y - 0.008, frame)
        canvas.box(cx - eye_dx + rim_x, cx + eye_dx - rim_x, eye_y - 0.022, eye_y - 0.002, frame)

    canvas.rgb *= (255 * (1 + light_x * (x - 0.5) + light_y * (y - 0.5)))[..., None]
    canvas.rgb += 0.5  # round, not truncate, below
    return np.clip(canvas.rgb, 0, 255, out=canvas.rgb).astype(np.uint8)

