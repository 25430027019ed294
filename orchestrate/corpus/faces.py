"""Procedurally drawn faces for the demo corpus.

A face lives in a face-local frame (unit = half the head's width, x to the right, y down,
origin at the head's centre) that an affine pose (position, scale, roll) maps into the image.
The parts that never move on the head (hair, ears, shaded skin) are drawn once per actor into
a sprite that is warped into each frame; the parts that carry the expression (eyes, brows,
nose lines, mouth) are drawn per frame as OpenCV primitives through the same pose. Drawing
happens at ``SUPERSAMPLE`` times the output size and is area-downscaled, which anti-aliases
the small frames.

The Haar frontal-face cascade keys on luminance contrasts and proportions: an eye band darker
than the cheeks below and the forehead above, a bright nose bridge between the eyes, a head
that stands out from its surround, and eyes, nose and mouth where a real face has them. The
shading and the geometry ranges below were tuned against the cascade (thin brows, eyes close
to the head's centre line, a mouth not too far below the nose), so that every skin tone,
expression and pose stays detectable.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np

FRAME_WIDTH = 160
FRAME_HEIGHT = 120
SUPERSAMPLE = 2  # drawn at 2x and area-downscaled: anti-aliasing for small frames
_SHIFT = 4  # fixed-point bits for cv2 coordinates: sub-pixel placement of every primitive
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class FaceIdentity:
    """One actor's face: geometry and colours that stay fixed across all of their clips."""

    head_half_width: float  # in output pixels
    head_aspect: float  # half-height / half-width
    eye_spacing: float  # eye centre distance from the midline, in head half-widths
    eye_height: float  # eye centre y (negative = above the head centre)
    eye_size: float  # eye half-width
    brow_thickness: float
    nose_length: float  # nose tip y
    mouth_height: float  # mouth centre y
    mouth_half_width: float
    lip_thickness: float
    skin_rgb: tuple[float, float, float]  # 0..255
    hair_rgb: tuple[float, float, float]
    iris_rgb: tuple[float, float, float]
    lip_rgb: tuple[float, float, float]
    long_hair: bool
    resting: Expression  # the actor's own neutral face (a slight habitual smile or frown)


@dataclass(frozen=True)
class Expression:
    """Facial action parameters, each about -1..1, 0 for a neutral face."""

    smile: float = 0.0  # mouth corners up (+) or down (-)
    mouth_open: float = 0.0  # jaw drop, 0..1
    mouth_stretch: float = 0.0  # corners pulled out (+) or pursed in (-)
    brow_raise: float = 0.0  # whole brow up (+) or lowered (-)
    brow_inner: float = 0.0  # inner brow ends raised (+, sad, fear) or pulled down (-, anger)
    eye_open: float = 0.0  # wide (+) or narrowed (-)
    cheek_raise: float = 0.0  # cheeks up, lower lids pushed up (smile), 0..1
    nose_wrinkle: float = 0.0  # disgust wrinkles beside the nose, 0..1
    lip_raise: float = 0.0  # upper lip raised on one side (disgust), 0..1

    def scaled(self, weight: float) -> Expression:
        """This expression with every action multiplied by ``weight``."""
        return Expression(**{f.name: getattr(self, f.name) * weight for f in fields(self)})

    def plus(self, other: Expression) -> Expression:
        """The sum of two expressions, action by action."""
        return Expression(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


@dataclass(frozen=True)
class Pose:
    """Where the head is in the frame: centre in output pixels, scale and roll (degrees)."""

    centre_x: float
    centre_y: float
    scale: float = 1.0
    roll_deg: float = 0.0


# Skin tones from light to dark (RGB); an actor's tone is drawn between two neighbours.
_SKIN_TONES = np.array(
    [
        (247, 214, 190),
        (234, 192, 160),
        (214, 164, 126),
        (186, 134, 98),
        (150, 101, 70),
        (118, 80, 56),
    ],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [(30, 24, 20), (62, 42, 28), (96, 66, 40), (150, 116, 70), (110, 108, 104), (70, 34, 22)],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array(
    [(70, 45, 25), (40, 30, 25), (60, 90, 120), (70, 95, 60)], dtype=np.float64
)


def draw_identity(rng: np.random.Generator, female: bool) -> FaceIdentity:
    """A random actor face: geometry, skin tone, hair and a habitual resting expression."""
    tone_pos = rng.uniform(0, len(_SKIN_TONES) - 1)
    low = int(np.floor(tone_pos))
    high = min(low + 1, len(_SKIN_TONES) - 1)
    skin = _SKIN_TONES[low] + (tone_pos - low) * (_SKIN_TONES[high] - _SKIN_TONES[low])
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.1)
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]
    lip = skin * np.array([0.82, 0.55, 0.55]) + np.array([30.0, 0.0, 0.0])
    return FaceIdentity(
        head_half_width=rng.uniform(27.0, 32.0) * (0.96 if female else 1.0),
        head_aspect=rng.uniform(1.3, 1.42),
        eye_spacing=rng.uniform(0.33, 0.39),
        eye_height=rng.uniform(-0.1, 0.0),
        eye_size=rng.uniform(0.15, 0.19) * (1.05 if female else 1.0),
        brow_thickness=rng.uniform(0.033, 0.048) * (0.85 if female else 1.0),
        nose_length=rng.uniform(0.28, 0.36),
        mouth_height=rng.uniform(0.56, 0.64),
        mouth_half_width=rng.uniform(0.27, 0.34),
        lip_thickness=rng.uniform(0.05, 0.08) * (1.15 if female else 1.0),
        skin_rgb=tuple(float(c) for c in skin),
        hair_rgb=tuple(float(c) for c in np.clip(hair, 0, 255)),
        iris_rgb=tuple(float(c) for c in iris),
        lip_rgb=tuple(float(c) for c in np.clip(lip, 0, 255)),
        long_hair=bool(rng.random() < (0.75 if female else 0.1)),
        resting=Expression(
            smile=rng.normal(0.0, 0.08),
            brow_raise=rng.normal(0.0, 0.08),
            eye_open=rng.normal(0.0, 0.08),
        ),
    )


def _colour(rgb: tuple[float, ...] | np.ndarray) -> tuple[float, ...]:
    """A cv2 colour: plain Python floats (cv2 rejects numpy scalars)."""
    return tuple(float(c) for c in rgb)


class _Canvas:
    """Maps face-local coordinates to fixed-point pixel coordinates of the supersampled image."""

    def __init__(self, identity: FaceIdentity, pose: Pose) -> None:
        self.unit = identity.head_half_width * pose.scale * SUPERSAMPLE
        theta = np.deg2rad(pose.roll_deg)
        self.rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        self.origin = np.array([pose.centre_x, pose.centre_y]) * SUPERSAMPLE
        self.roll_deg = pose.roll_deg

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Face-local points (n, 2) → fixed-point int32 image points for cv2."""
        image_xy = np.asarray(xy, dtype=np.float64) @ self.rotation.T * self.unit + self.origin
        return np.round(image_xy * _ONE).astype(np.int32)

    def length(self, value: float) -> int:
        """A face-local length in fixed-point image pixels."""
        return max(1, int(round(value * self.unit * _ONE)))

    def ellipse(
        self,
        image: np.ndarray,
        centre: tuple[float, float],
        axes: tuple[float, float],
        colour: tuple[float, ...],
        thickness: int = -1,
        angle: float = 0.0,
    ) -> None:
        """A filled (or outlined) ellipse in face-local coordinates."""
        (cx, cy) = self.points(np.array([centre]))[0]
        cv2.ellipse(
            image,
            (int(cx), int(cy)),
            (self.length(axes[0]), self.length(axes[1])),
            angle + self.roll_deg,
            0,
            360,
            _colour(colour),
            thickness,
            cv2.LINE_AA,
            _SHIFT,
        )

    def polygon(self, image: np.ndarray, xy: np.ndarray, colour: tuple[float, ...]) -> None:
        """A filled polygon in face-local coordinates."""
        cv2.fillPoly(image, [self.points(xy)], _colour(colour), cv2.LINE_AA, _SHIFT)

    def polyline(
        self, image: np.ndarray, xy: np.ndarray, colour: tuple[float, ...], width: float
    ) -> None:
        """An open polyline of face-local ``width``."""
        thickness = max(1, int(round(width * self.unit)))
        cv2.polylines(
            image, [self.points(xy)], False, _colour(colour), thickness, cv2.LINE_AA, _SHIFT
        )


def _bump(u: np.ndarray, v: np.ndarray, x: float, y: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((u - x) / sx) ** 2 + ((v - y) / sy) ** 2))


def _curve(x0: float, x1: float, y_ends: float, y_mid: float, n: int = 9) -> np.ndarray:
    """A parabola-like curve from (x0, y_ends) to (x1, y_ends) through y_mid at the middle."""
    t = np.linspace(-1.0, 1.0, n)
    xs = x0 + (t + 1.0) / 2.0 * (x1 - x0)
    ys = y_ends + (y_mid - y_ends) * (1.0 - t**2)
    return np.stack([xs, ys], axis=1)


class FaceRenderer:
    """Draws one actor's face, in any expression and pose, over a background.

    The parts that never move relative to the head (hair, ears, the shaded skin) are drawn
    once into a premultiplied RGBA sprite and warped into each frame; the parts that carry
    the expression (eyes, brows, nose lines, mouth) are drawn per frame as vector primitives.
    """

    def __init__(self, identity: FaceIdentity) -> None:
        self.identity = identity
        self._sprite, self._sprite_origin = self._draw_head_sprite()

    def _draw_head_sprite(self) -> tuple[np.ndarray, np.ndarray]:
        identity = self.identity
        aspect = identity.head_aspect
        unit = identity.head_half_width * SUPERSAMPLE
        width = int(np.ceil(2.6 * unit)) + 4
        height = int(np.ceil(2.3 * aspect * unit)) + 4
        origin_x, origin_y = width / 2.0, 1.2 * aspect * unit + 2
        canvas = _Canvas(identity, Pose(origin_x / SUPERSAMPLE, origin_y / SUPERSAMPLE))
        sprite = np.zeros((height, width, 4), dtype=np.float32)
        hair = (*identity.hair_rgb, 255.0)
        skin = np.asarray(identity.skin_rgb, dtype=np.float32)

        # Hair behind the head: a cap, and for long hair a curtain down to the jaw.
        if identity.long_hair:
            curtain = [[-1.12, -0.6], [1.12, -0.6], [1.18, aspect * 0.85], [-1.18, aspect * 0.85]]
            canvas.polygon(sprite, np.array(curtain), hair)
        canvas.ellipse(sprite, (0.0, -0.22 * aspect), (1.1, aspect * 0.88), hair)
        for side in (-1.0, 1.0):
            canvas.ellipse(sprite, (side * 0.98, 0.0), (0.14, 0.26), (*(skin * 0.85), 255.0))
        canvas.ellipse(sprite, (0.0, 0.0), (1.0, aspect), (*(skin * 0.7), 255.0))

        # Shaded skin inside a slightly smaller ellipse, so a darker rim outlines the head.
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        u = (xs + 0.5 - origin_x) / unit
        v = (ys + 0.5 - origin_y) / unit
        r2 = u**2 + (v / aspect) ** 2
        hairline = -aspect * 0.62 + 0.12 * u**2
        skin_mask = (r2 <= 0.985**2) & (v > hairline)
        eye_y = identity.eye_height
        shade = 1.0 - 0.2 * r2**2  # rounded head: darker towards the rim
        for side in (-1.0, 1.0):
            # Eye sockets, reaching up to the brows: the Haar "eye band darker than the
            # cheeks and the forehead" features.
            shade -= 0.38 * _bump(u, v, side * identity.eye_spacing, eye_y - 0.04, 0.26, 0.17)
            shade += 0.08 * _bump(u, v, side * 0.45, identity.mouth_height - 0.35, 0.22, 0.16)
        shade += 0.10 * _bump(u, v, 0.0, eye_y + 0.05, 0.08, 0.35)  # bright nose bridge
        shade -= 0.18 * _bump(u, v, 0.0, identity.nose_length + 0.09, 0.15, 0.05)  # nose shadow
        shade -= 0.12 * _bump(u, v, 0.0, identity.mouth_height + 0.28, 0.25, 0.06)  # lip shadow
        shaded = np.clip(shade, 0.3, 1.2)[..., None] * skin
        sprite[skin_mask, :3] = shaded[skin_mask]
        sprite[skin_mask, 3] = 255.0
        # Above the hairline the head is hair, a little darker towards the crown.
        hair_mask = (r2 <= 1.0) & (v <= hairline)
        sprite[hair_mask, :3] = (
            np.asarray(identity.hair_rgb, dtype=np.float32)
            * (1.0 - 0.25 * np.clip(r2[hair_mask], 0.0, 1.0))[:, None]
        )
        sprite[hair_mask, 3] = 255.0
        return sprite, np.array([origin_x, origin_y])

    def render(self, background: np.ndarray, expression: Expression, pose: Pose) -> np.ndarray:
        """The face over ``background`` (supersampled RGB float32), as a float32 RGB frame.

        The frame is (FRAME_HEIGHT, FRAME_WIDTH, 3), 0..255, not yet quantised: sensor noise
        is added by the caller after downscaling, as a camera would.
        """
        identity = self.identity
        expr = identity.resting.plus(expression)
        canvas = _Canvas(identity, pose)
        # Sprite pixel p lands at scale * R (p - sprite_origin) + frame_origin.
        linear = canvas.rotation * pose.scale
        offset = canvas.origin - linear @ self._sprite_origin
        warp = np.hstack([linear, offset[:, None]])
        height, width = background.shape[:2]
        head = cv2.warpAffine(
            self._sprite, warp, (width, height), flags=cv2.INTER_LINEAR, borderValue=0
        )
        coverage = head[..., 3:] / 255.0
        image = np.ascontiguousarray(background * (1.0 - coverage) + head[..., :3])

        _draw_eyes(image, canvas, identity, expr)
        _draw_brows(image, canvas, identity, expr)
        _draw_nose(image, canvas, identity, expr)
        _draw_mouth(image, canvas, identity, expr)
        return cv2.resize(image, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA)


def _draw_eyes(
    image: np.ndarray, canvas: _Canvas, identity: FaceIdentity, expr: Expression
) -> None:
    eye_y = identity.eye_height
    half_w = identity.eye_size
    openness = np.clip(0.55 + 0.35 * expr.eye_open - 0.25 * expr.cheek_raise, 0.12, 1.0)
    half_h = half_w * 0.55 * openness
    skin = np.asarray(identity.skin_rgb)
    for side in (-1.0, 1.0):
        cx = side * identity.eye_spacing
        canvas.ellipse(image, (cx, eye_y), (half_w, half_h), (215.0, 212.0, 206.0))
        iris_r = half_w * 0.5
        iris_h = min(iris_r, half_h * 1.05)
        canvas.ellipse(image, (cx, eye_y), (iris_r, iris_h), identity.iris_rgb)
        canvas.ellipse(image, (cx, eye_y), (iris_r * 0.45, min(iris_r * 0.45, half_h)), (10, 8, 8))
        # Upper lid: a dark lash line; its ends droop when the eye narrows.
        lid = _curve(cx - half_w * 1.05, cx + half_w * 1.05, eye_y, eye_y - half_h * 1.05)
        canvas.polyline(image, lid, (25.0, 18.0, 16.0), 0.05)
        # Lower lid pushed up by the cheeks in a smile.
        if expr.cheek_raise > 0.05:
            lower = _curve(cx - half_w, cx + half_w, eye_y + half_h * 0.2, eye_y + half_h * 1.1)
            canvas.polyline(image, lower, tuple(skin * 0.6), 0.03)


def _draw_brows(
    image: np.ndarray, canvas: _Canvas, identity: FaceIdentity, expr: Expression
) -> None:
    base_y = identity.eye_height - identity.eye_size * 1.15 - 0.06
    raise_ = 0.11 * expr.brow_raise
    inner = 0.10 * expr.brow_inner
    for side in (-1.0, 1.0):
        inner_x = side * (identity.eye_spacing - identity.eye_size * 1.0)
        outer_x = side * (identity.eye_spacing + identity.eye_size * 1.3)
        mid_x = (inner_x + outer_x) / 2.0
        pts = np.array(
            [
                [inner_x, base_y - raise_ - inner],
                [mid_x, base_y - raise_ - 0.04 - inner * 0.3],
                [outer_x, base_y - raise_ + 0.02],
            ]
        )
        canvas.polyline(image, pts, identity.hair_rgb, identity.brow_thickness)
    if expr.brow_inner < -0.2:  # furrow between the brows
        strength = min(1.0, -expr.brow_inner)
        colour = tuple(np.asarray(identity.skin_rgb) * (1.0 - 0.35 * strength))
        for side in (-1.0, 1.0):
            canvas.polyline(
                image,
                np.array([[side * 0.05, base_y - 0.02], [side * 0.07, base_y + 0.1]]),
                colour,
                0.025,
            )


def _draw_nose(
    image: np.ndarray, canvas: _Canvas, identity: FaceIdentity, expr: Expression
) -> None:
    skin = np.asarray(identity.skin_rgb)
    tip_y = identity.nose_length - 0.05 * expr.nose_wrinkle
    for side in (-1.0, 1.0):
        canvas.ellipse(image, (side * 0.07, tip_y + 0.03), (0.045, 0.025), tuple(skin * 0.45))
        # Nose side line.
        canvas.polyline(
            image,
            np.array([[side * 0.06, identity.eye_height + 0.15], [side * 0.11, tip_y - 0.02]]),
            tuple(skin * 0.82),
            0.025,
        )
    if expr.nose_wrinkle > 0.1:
        colour = tuple(skin * (1.0 - 0.4 * min(1.0, expr.nose_wrinkle)))
        for side in (-1.0, 1.0):
            for k in range(2):
                y = identity.eye_height + 0.14 + 0.06 * k
                canvas.polyline(
                    image,
                    np.array([[side * 0.08, y], [side * 0.17, y + 0.03]]),
                    colour,
                    0.02,
                )
    # Nasolabial folds deepen with a smile or a disgusted lip raise.
    fold = max(expr.cheek_raise, expr.lip_raise, expr.smile * 0.8)
    if fold > 0.1:
        colour = tuple(skin * (1.0 - 0.35 * min(1.0, fold)))
        for side in (-1.0, 1.0):
            canvas.polyline(
                image,
                np.array(
                    [
                        [side * 0.16, tip_y - 0.02],
                        [side * 0.30, tip_y + 0.14],
                        [side * (identity.mouth_half_width + 0.05), identity.mouth_height],
                    ]
                ),
                colour,
                0.025,
            )


def _draw_mouth(
    image: np.ndarray, canvas: _Canvas, identity: FaceIdentity, expr: Expression
) -> None:
    my = identity.mouth_height
    half_w = identity.mouth_half_width * (
        1.0 + 0.25 * expr.mouth_stretch + 0.12 * max(0.0, expr.smile)
    )
    corner_y = my - 0.14 * expr.smile
    opening = 0.22 * max(0.0, expr.mouth_open)
    lip = identity.lip_thickness
    # Disgust raises one side of the upper lip.
    lift_left = 0.07 * expr.lip_raise
    n = 13
    t = np.linspace(-1.0, 1.0, n)
    xs = t * half_w
    # Lips meet on a line that bows with the smile; the opening drops the lower lip.
    centre_line = corner_y + (my - corner_y) * (1.0 - t**2) + 0.02 * expr.smile * (1.0 - t**2)
    upper_inner = centre_line - opening * 0.25 * (1.0 - t**2) - lift_left * (1.0 - t) / 2.0
    lower_inner = centre_line + opening * (1.0 - t**2) ** 0.7
    upper_outer = upper_inner - lip * (1.0 - t**2) ** 0.5 - 0.01
    lower_outer = lower_inner + lip * 1.2 * (1.0 - t**2) ** 0.5 + 0.01
    lips = np.concatenate(
        [np.stack([xs, upper_outer], 1), np.stack([xs[::-1], lower_outer[::-1]], 1)]
    )
    canvas.polygon(image, lips, identity.lip_rgb)
    if opening > 0.01:
        inner = np.concatenate(
            [np.stack([xs, upper_inner], 1), np.stack([xs[::-1], lower_inner[::-1]], 1)]
        )
        canvas.polygon(image, inner, (70.0, 24.0, 28.0))
        # Teeth show under the upper lip when the mouth opens.
        teeth_h = min(0.05, opening * 0.5)
        teeth = np.concatenate(
            [
                np.stack([xs[2:-2] * 0.9, upper_inner[2:-2]], 1),
                np.stack([xs[2:-2][::-1] * 0.9, upper_inner[2:-2][::-1] + teeth_h], 1),
            ]
        )
        canvas.polygon(image, teeth, (225.0, 220.0, 205.0))
    else:
        canvas.polyline(image, np.stack([xs, centre_line], 1), (60.0, 25.0, 25.0), 0.02)
