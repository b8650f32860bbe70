"""AutoAugment, RandAugment and TrivialAugment Wide for the tf.data pipeline, in TF ops.

The same policies as the DALI pipeline's ``nvidia.dali.auto_aug`` (auto_augment_image_net,
rand_augment, trivial_augment_wide, with their default arguments): the same op suites in the
same order, the same magnitude ranges and bin -> parameter mappings (computed as DALI does:
``linspace(lo, hi, bins)`` in float32, randomly negated for the signed ops, then the op's
mapping), the same fill value (128), bilinear warps with DALI's pixel-center convention, and
the same way of picking ops. Each op is a function ``op(image, parameter)`` on a [H, W, 3]
float32 image of whole numbers in 0..255 that returns one of the same kind, rounded and clipped
as DALI's uint8 outputs are; tests/test_augment.py compares each op with DALI's.

All randomness is stateless and drawn from one [2] seed per image, so a policy's draws are a
pure function of that seed (exact resume). The draws are DALI's distributions, not its numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

FILL = 128.0  # DALI's fill_value for the warps (translate, shear, rotate)
Op = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def _to_uint8_values(image: tf.Tensor) -> tf.Tensor:
    # DALI's ops output uint8: rounded half away from zero, saturated (its ConvertSat).
    return tf.clip_by_value(tf.floor(image + 0.5), 0.0, 255.0)


# --- geometric ops: DALI's warp_affine/rotate, bilinear, fill 128 ------------------------------


def _warp(image: tf.Tensor, forward: tf.Tensor) -> tf.Tensor:
    """Warps by the 2x3 `forward` matrix (source -> destination, (x, y) coordinates with pixel
    centers at +0.5, as DALI's warp_affine with inverse_map=False)."""
    a, b, c = forward[0, 0], forward[0, 1], forward[0, 2]
    d, e, f = forward[1, 0], forward[1, 1], forward[1, 2]
    det = a * e - b * d
    # Destination -> source (TF's convention), then shifted to TF's integer pixel centers.
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    ic, if_ = -(ia * c + ib * f), -(id_ * c + ie * f)
    tx = ia * 0.5 + ib * 0.5 + ic - 0.5
    ty = id_ * 0.5 + ie * 0.5 + if_ - 0.5
    transform = tf.stack([ia, ib, tx, id_, ie, ty, 0.0, 0.0])[tf.newaxis]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=tf.cast(transform, tf.float32),
        output_shape=tf.shape(image)[:2],
        fill_value=FILL,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return _to_uint8_values(out[0])


def _matrix(rows: Sequence[Sequence[tf.Tensor | float]]) -> tf.Tensor:
    return tf.stack([tf.stack([tf.cast(v, tf.float32) for v in row]) for row in rows])


def shear_x(image: tf.Tensor, shear: tf.Tensor) -> tf.Tensor:
    """x' = x + shear * y (DALI's transforms.shear about the origin, the top left corner)."""
    return _warp(image, _matrix([[1.0, shear, 0.0], [0.0, 1.0, 0.0]]))


def shear_y(image: tf.Tensor, shear: tf.Tensor) -> tf.Tensor:
    return _warp(image, _matrix([[1.0, 0.0, 0.0], [shear, 1.0, 0.0]]))


def translate_x(image: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    """Moves the content `offset` pixels right (DALI's translate_x_no_shape: absolute pixels)."""
    return _warp(image, _matrix([[1.0, 0.0, offset], [0.0, 1.0, 0.0]]))


def translate_y(image: tf.Tensor, offset: tf.Tensor) -> tf.Tensor:
    return _warp(image, _matrix([[1.0, 0.0, 0.0], [0.0, 1.0, offset]]))


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """Rotates about the image center by `degrees`, keeping the size (DALI's fn.rotate)."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = shape[1] / 2, shape[0] / 2
    # Counter-clockwise on screen (y down) for a positive angle, about (cx, cy).
    return _warp(
        image,
        _matrix(
            [
                [cos, sin, cx - cos * cx - sin * cy],
                [-sin, cos, cy + sin * cx - cos * cy],
            ]
        ),
    )


# --- colour ops -----------------------------------------------------------------------------


def brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return _to_uint8_values(image * factor)


def contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL's Contrast as DALI has it: about the luma-weighted mean of the image."""
    mean = tf.reduce_mean(image, axis=[0, 1])
    center = tf.reduce_sum(mean * tf.constant([0.299, 0.587, 0.114]))
    return _to_uint8_values(center + (image - center) * factor)


# DALI's fn.saturation is a colour twist in YIQ: to YIQ, I and Q scaled, back with the exact
# inverse. As Y + s * (I, Q) terms, precomputed in float64 (PIL's Color up to the matrix).
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
_KEEP_Y = (_YIQ_TO_RGB[:, :1] @ _RGB_TO_YIQ[:1]).astype(np.float32)
_SCALE_IQ = (_YIQ_TO_RGB[:, 1:] @ _RGB_TO_YIQ[1:]).astype(np.float32)


def color(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Saturation: Y kept, I and Q scaled by `factor` (fn.saturation)."""
    twist = tf.constant(_KEEP_Y) + tf.cast(factor, tf.float32) * tf.constant(_SCALE_IQ)
    return _to_uint8_values(tf.einsum("hwc,dc->hwd", image, twist))


_BLUR = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
_IDENTITY_KERNEL = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)


def sharpness(image: tf.Tensor, magnitude: tf.Tensor) -> tf.Tensor:
    """DALI's filter with ``-m * blur + (1 + m) * identity``, borders reflected (101)."""
    kernel = -magnitude * _BLUR + (1.0 + magnitude) * _IDENTITY_KERNEL
    kernel = tf.tile(tf.reshape(kernel, [3, 3, 1, 1]), [1, 1, 3, 1])
    padded = tf.pad(image, [[1, 1], [1, 1], [0, 0]], mode="REFLECT")
    out = tf.nn.depthwise_conv2d(padded[tf.newaxis], kernel, [1, 1, 1, 1], "VALID")
    # Ties to even here: 1 level off DALI in 1.1% of values with half away, 0.01% with this.
    return tf.clip_by_value(tf.round(out[0]), 0.0, 255.0)


def posterize(image: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Keeps the bits of `mask` (the high bits) of each value."""
    bits = tf.bitwise.bitwise_and(tf.cast(image, tf.uint8), tf.cast(mask, tf.uint8))
    return tf.cast(bits, tf.float32)


def solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    return tf.where(image < threshold, image, 255.0 - image)


def solarize_add(image: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    return tf.where(image < 128.0, image + shift, image)


def invert(image: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
    return 255.0 - image


def equalize(image: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
    """Per-channel histogram equalization, OpenCV's formula (DALI's equalize follows it)."""
    values = tf.cast(image, tf.int32)
    total = tf.cast(tf.shape(image)[0] * tf.shape(image)[1], tf.float32)

    def channel(c: tf.Tensor) -> tf.Tensor:
        hist = tf.cast(tf.math.bincount(c, minlength=256, maxlength=256), tf.float32)
        first = hist[tf.argmax(tf.cast(hist > 0, tf.int32))]  # count of the lowest value
        scale = 255.0 / tf.maximum(total - first, 1.0)
        lut = _to_uint8_values((tf.cumsum(hist) - first) * scale)
        # One value only: OpenCV leaves the image as it is.
        lut = tf.where(first == total, tf.range(256, dtype=tf.float32), lut)
        return tf.gather(lut, c)

    return tf.stack([channel(values[..., i]) for i in range(3)], axis=-1)


def auto_contrast(image: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
    """Stretches each channel's [min, max] to [0, 255]; a flat channel stays as it is."""
    lo = tf.reduce_min(image, axis=[0, 1])
    hi = tf.reduce_max(image, axis=[0, 1])
    spread = hi - lo > 0
    scale = 255.0 / tf.where(spread, hi - lo, 255.0)
    return _to_uint8_values((image - tf.where(spread, lo, 0.0)) * scale)


def identity(image: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
    return image


OPS: dict[str, Op] = {
    "translate_x": translate_x,
    "translate_y": translate_y,
    "shear_x": shear_x,
    "shear_y": shear_y,
    "rotate": rotate,
    "brightness": brightness,
    "contrast": contrast,
    "color": color,
    "sharpness": sharpness,
    "posterize": posterize,
    "solarize": solarize,
    "solarize_add": solarize_add,
    "invert": invert,
    "equalize": equalize,
    "auto_contrast": auto_contrast,
    "identity": identity,
}


# --- magnitudes: DALI's bins -> parameters ----------------------------------------------------


def _posterize_mask(magnitude: float) -> int:
    """DALI's poster_mask_uint8: keep round(magnitude) bits (at least 1, at most 8)."""
    bits = min(max(int(np.round(magnitude)), 1), 8)
    return 255 ^ (2 ** (8 - bits) - 1)


def _shift_enhance(magnitude: float) -> float:
    return 1.0 + magnitude  # neutral at 1: the signed magnitude moves away from it


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """An op with DALI's magnitude setup: ``mag_range`` split into the policy's bins
    (None: no magnitude), negated at random when ``signed``, then ``to_param``."""

    name: str
    mag_range: tuple[float, float] | None = None
    signed: bool = False
    to_param: Callable[[float], float] | None = None

    def params(self, bins: int) -> np.ndarray:
        """[2 * bins] float32: the parameter of bin b with sign s (1: negated) at 2 * b + s."""
        if self.mag_range is None:
            return np.zeros(2 * bins, np.float32)
        magnitudes = np.linspace(*self.mag_range, bins, dtype=np.float32)
        out = []
        for magnitude in magnitudes:
            for sign in (0, 1):
                m = -magnitude if self.signed and sign else magnitude
                out.append(self.to_param(m) if self.to_param else m)
        return np.array(out, np.float32)


def _common(
    translate: float, shear: float, degrees: float, enhance: tuple[float, float], bits: float
) -> list[Augmentation]:
    """RandAugment's and TrivialAugment Wide's suite (DALI's order), with their ranges."""
    return [
        Augmentation("translate_x", (0, translate), True),
        Augmentation("translate_y", (0, translate), True),
        Augmentation("shear_x", (0, shear), True),
        Augmentation("shear_y", (0, shear), True),
        Augmentation("rotate", (0, degrees), True),
        Augmentation("brightness", enhance, True, _shift_enhance),
        Augmentation("contrast", enhance, True, _shift_enhance),
        Augmentation("color", enhance, True, _shift_enhance),
        Augmentation("sharpness", enhance, True),  # the kernel's magnitude m
        Augmentation("posterize", (8, bits), False, _posterize_mask),
        Augmentation("solarize", (256, 0)),
        Augmentation("equalize"),
        Augmentation("auto_contrast"),
        Augmentation("identity"),
    ]


# DALI's get_rand_augment_suite (translations of up to 100 px) and
# get_trivial_augment_wide_suite (up to 32 px), without image shapes: absolute pixels.
RAND_AUGMENT_SUITE = _common(100, 0.3, 30, (0, 0.9), 4)
TRIVIAL_AUGMENT_SUITE = _common(32, 0.99, 135, (0.01, 0.99), 2)

# DALI's get_image_net_policy: 11 bins; translations of up to 250 px.
AUTO_AUGMENT_BINS = 11
AUTO_AUGMENT_SUITE: dict[str, Augmentation] = {
    "shear_x": Augmentation("shear_x", (0, 0.3), True),
    "shear_y": Augmentation("shear_y", (0, 0.3), True),
    "translate_y": Augmentation("translate_y", (0, 250), True),
    "rotate": Augmentation("rotate", (0, 30), True),
    "color": Augmentation("color", (0.1, 1.9)),
    "posterize": Augmentation("posterize", (0, 4), False, _posterize_mask),
    "solarize": Augmentation("solarize", (0, 256)),
    "solarize_add": Augmentation("solarize_add", (0, 110)),
    "invert": Augmentation("invert"),
    "equalize": Augmentation("equalize"),
    "auto_contrast": Augmentation("auto_contrast"),
}
# (op, probability, bin) stages of the 25 sub-policies.
AUTO_AUGMENT_POLICY: list[list[tuple[str, float, int | None]]] = [
    [("equalize", 0.8, None), ("shear_y", 0.8, 4)],
    [("color", 0.4, 9), ("equalize", 0.6, None)],
    [("color", 0.4, 1), ("rotate", 0.6, 8)],
    [("solarize", 0.8, 3), ("equalize", 0.4, None)],
    [("solarize", 0.4, 2), ("solarize", 0.6, 2)],
    [("color", 0.2, 0), ("equalize", 0.8, None)],
    [("equalize", 0.4, None), ("solarize_add", 0.8, 3)],
    [("shear_x", 0.2, 9), ("rotate", 0.6, 8)],
    [("color", 0.6, 1), ("equalize", 1.0, None)],
    [("invert", 0.4, None), ("rotate", 0.6, 0)],
    [("equalize", 1.0, None), ("shear_y", 0.6, 3)],
    [("color", 0.4, 7), ("equalize", 0.6, None)],
    [("posterize", 0.4, 6), ("auto_contrast", 0.4, None)],
    [("solarize", 0.6, 8), ("color", 0.6, 9)],
    [("solarize", 0.2, 4), ("rotate", 0.8, 9)],
    [("rotate", 1.0, 7), ("translate_y", 0.8, 9)],
    [("solarize", 0.8, 4)],
    [("shear_y", 0.8, 0), ("color", 0.6, 4)],
    [("color", 1.0, 0), ("rotate", 0.6, 2)],
    [("equalize", 0.8, None)],
    [("equalize", 1.0, None), ("auto_contrast", 0.6, None)],
    [("shear_y", 0.4, 7), ("solarize_add", 0.6, 7)],
    [("posterize", 0.8, 2), ("solarize", 0.6, 10)],
    [("solarize", 0.6, 8), ("equalize", 0.6, None)],
    [("color", 0.8, 6), ("rotate", 0.4, 5)],
]


# --- the policies -----------------------------------------------------------------------------


def _apply_one(
    image: tf.Tensor, suite: Sequence[Augmentation], bins: int, op: tf.Tensor, signed_bin: tf.Tensor
) -> tf.Tensor:
    """suite[op] at parameter index `signed_bin` (2 * bin + sign)."""
    table = tf.constant(np.stack([a.params(bins) for a in suite]))
    param = table[op, signed_bin]
    branches = [lambda a=a: OPS[a.name](image, param) for a in suite]
    return tf.ensure_shape(tf.switch_case(op, branches), image.shape)


def _uniform_int(shape: list[int], seed: tf.Tensor, n: int) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=0, maxval=n, dtype=tf.int32)


def rand_augment(
    image: tf.Tensor, seed: tf.Tensor, *, n: int, magnitude: int, bins: int
) -> tf.Tensor:
    """n ops drawn uniformly (with repeats) from the suite, each at bin `magnitude` with a
    random sign, one after the other (DALI's apply_rand_augment)."""
    op_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    ops = _uniform_int([n], op_seed, len(RAND_AUGMENT_SUITE))
    signs = _uniform_int([n], sign_seed, 2)
    for i in range(n):
        image = _apply_one(image, RAND_AUGMENT_SUITE, bins, ops[i], 2 * magnitude + signs[i])
    return image


def trivial_augment(image: tf.Tensor, seed: tf.Tensor, *, bins: int) -> tf.Tensor:
    """One op drawn uniformly from the wide suite at a uniform bin with a random sign."""
    op_seed, bin_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    op = _uniform_int([], op_seed, len(TRIVIAL_AUGMENT_SUITE))
    magnitude = _uniform_int([], bin_seed, bins)
    sign = _uniform_int([], sign_seed, 2)
    return _apply_one(image, TRIVIAL_AUGMENT_SUITE, bins, op, 2 * magnitude + sign)


def _auto_augment_tables() -> tuple[list[Augmentation], np.ndarray, np.ndarray, np.ndarray]:
    """The policy's ops, and per [sub-policy, stage]: op index, probability, bin (a missing
    stage has probability 0, as in DALI)."""
    names = sorted({name for sub in AUTO_AUGMENT_POLICY for name, _, _ in sub})
    stages = max(len(sub) for sub in AUTO_AUGMENT_POLICY)
    ops = np.zeros([len(AUTO_AUGMENT_POLICY), stages], np.int32)
    probs = np.zeros([len(AUTO_AUGMENT_POLICY), stages], np.float32)
    bins = np.zeros([len(AUTO_AUGMENT_POLICY), stages], np.int32)
    for i, sub in enumerate(AUTO_AUGMENT_POLICY):
        for j, (name, p, b) in enumerate(sub):
            ops[i, j], probs[i, j], bins[i, j] = names.index(name), p, b or 0
    return [AUTO_AUGMENT_SUITE[name] for name in names], ops, probs, bins


def _maybe_apply(
    image: tf.Tensor,
    run: tf.Tensor,
    suite: Sequence[Augmentation],
    op: tf.Tensor,
    signed_bin: tf.Tensor,
) -> tf.Tensor:
    return tf.cond(
        run, lambda: _apply_one(image, suite, AUTO_AUGMENT_BINS, op, signed_bin), lambda: image
    )


def auto_augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A sub-policy drawn uniformly; each of its stages runs with its probability, at its bin
    with a random sign (DALI's apply_auto_augment with the ImageNet policy)."""
    suite, ops, probs, bins = _auto_augment_tables()
    pick_seed, run_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    sub = _uniform_int([], pick_seed, len(AUTO_AUGMENT_POLICY))
    should_run = tf.random.stateless_uniform([ops.shape[1]], run_seed)
    signs = _uniform_int([ops.shape[1]], sign_seed, 2)
    for stage in range(ops.shape[1]):
        op = tf.constant(ops[:, stage])[sub]
        signed_bin = 2 * tf.constant(bins[:, stage])[sub] + signs[stage]
        run = should_run[stage] < tf.constant(probs[:, stage])[sub]
        image = _maybe_apply(image, run, suite, op, signed_bin)
    return image


def policy(
    name: str, *, n: int, magnitude: int, bins: int
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """--auto_augment's policy as ``f(image, seed)``: image [H, W, 3] float32 whole numbers in
    0..255, seed a [2] stateless seed."""
    if name == "autoaugment":
        return auto_augment
    if name == "randaugment":
        return lambda image, seed: rand_augment(image, seed, n=n, magnitude=magnitude, bins=bins)
    if name == "trivialaugment":
        return lambda image, seed: trivial_augment(image, seed, bins=bins)
    raise ValueError(f"unknown policy {name!r}")
