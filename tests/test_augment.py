"""Recipes beyond NVIDIA's, part 2: automatic augmentation, test-time resolution, progressive
resizing and the `fast` recipe.

All in process: the 24-record JPEG set of tests/data_fixtures.py at 32 px for the pipelines
(DALI on the CPU), the tiny ResNet of tests/test_trainer.py for the loop.
"""

from __future__ import annotations

import logging as py_logging

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
from tests.data_fixtures import UNIQUE_CLASSES, make_unique_dataset
from tests.test_trainer import BATCH, CLASSES, SINGLE, STEPS_PER_EPOCH, small_config
from tfconvnets import constants
from tfconvnets.config import RECIPES, DataConfig, resolve_config
from tfconvnets.config.data import MAGNITUDE_BINS, size_at_epoch
from tfconvnets.data import Pipeline, build_pipeline, tf_augment
from tfconvnets.errors import UserError
from tfconvnets.models import ResNetSpec, build_resnet
from tfconvnets.runtime.flags import define_flags, given_values
from tfconvnets.runtime.trainer import Trainer

# --- configuration -----------------------------------------------------------------------


def test_the_new_flags_are_generated_and_parsed():
    values = flags.FlagValues()
    define_flags(values)
    values(
        [
            "main.py", "--auto_augment=randaugment", "--auto_augment_magnitude=5",
            "--eval_image_size=288", "--eval_crop_ratio=0.95",
            "--image_size_schedule=160@0,192@0.5",
        ]
    )  # fmt: skip
    given = given_values(values)
    assert given["image_size_schedule"] == ((160, 0.0), (192, 0.5))
    resolved = resolve_config({"mode": "training_benchmark", **given})
    assert resolved.flat(as_text=True)["image_size_schedule"] == "160@0,192@0.5"  # as typed
    data = resolved.data
    assert (data.auto_augment, data.auto_augment_magnitude) == ("randaugment", 5)
    assert (data.eval_size, data.eval_crop_ratio) == (288, 0.95)
    assert data.train_size(0, 10) == 160 and data.train_size(5, 10) == 192
    plain = resolve_config(mode="training_benchmark").data  # all off by default
    assert (plain.auto_augment, plain.image_size_schedule, plain.eval_size) == ("none", (), 224)
    assert plain.eval_crop_ratio == constants.EVAL_CROP_FRACTION == 0.875
    values = flags.FlagValues()
    define_flags(values)
    values(["main.py", "--image_size_schedule=160"])
    with pytest.raises(UserError, match=r"^--image_size_schedule: '160' is not size@fraction"):
        given_values(values)


BAD = [
    (
        dict(auto_augment="augmix"),
        "--auto_augment: 'augmix' is not one of none, autoaugment, randaugment, trivialaugment",
    ),
    (dict(auto_augment_magnitude=31), "--auto_augment_magnitude: must be in 0..30, got 31"),
    (
        dict(image_size_schedule=((192, 0.0), (160, 0.5))),
        "--image_size_schedule: sizes must increase, got 192, 160",
    ),
    (
        dict(image_size_schedule=((160, 0.0), (200, 0.5))),
        "--image_size_schedule: sizes must be multiples of 32, got 200",
    ),
    (
        dict(image_size_schedule=((160, 0.2), (192, 0.5))),
        "--image_size_schedule: the first size must start at 0, not 0.2",
    ),
    (
        dict(image_size_schedule=((160, 0.0), (192, 0.5), (224, 0.5))),
        "--image_size_schedule: fractions must increase",
    ),
    (dict(eval_image_size=16), "--eval_image_size: must be 0 (--image_size) or at least 32"),
    (dict(eval_crop_ratio=1.5), "--eval_crop_ratio: must be in (0, 1]"),
]


@pytest.mark.parametrize("values, message", BAD, ids=[m.split(":")[0] + str(v) for v, m in BAD])
def test_bad_values_get_one_line_naming_the_flag(values, message):
    with pytest.raises(UserError) as raised:
        resolve_config({"mode": "training_benchmark", **values})
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
def test_tf_data_accepts_every_policy(policy, tmp_path):
    config = resolve_config(
        mode="training_benchmark", data_backend="tf", data_dir=str(tmp_path), auto_augment=policy
    )
    assert config.data.auto_augment == policy


# --- the `fast` recipe ---------------------------------------------------------------------


def test_the_fast_recipe_and_flags_over_it():
    config = resolve_config(recipe="fast", mode="training_benchmark")
    data, opt, loop = config.data, config.optimization, config.loop
    assert config.recipe == "fast" and "fast" in RECIPES
    assert data.image_size_schedule == ((160, 0.0), (192, 0.75))
    assert [data.train_size(e, 40) for e in (0, 29, 30, 39)] == [160, 160, 192, 192]
    assert (data.eval_size, data.eval_crop_ratio) == (256, 0.875)
    assert (loop.num_iter, loop.iter_unit, loop.batch_size) == (40, "epoch", 256)
    assert (opt.ema_decay, opt.label_smoothing, opt.lr_warmup_epochs) == (0.9998, 0.1, 2)
    assert (opt.lr_init, opt.momentum, opt.cosine_lr) == (0.256, 0.875, True)
    assert opt.weight_decay == 3.0517578125e-05  # on kernels only: no BN/bias decay
    assert (data.auto_augment, opt.cutmix, opt.mixup) == ("none", 0.0, 0.0)
    # Flags override the recipe, one value at a time.
    changed = resolve_config(
        recipe="fast", mode="training_benchmark", num_iter=16, eval_image_size=224,
        image_size_schedule=((128, 0.0), (160, 0.5)), ema_decay=0.0,
    )  # fmt: skip
    assert changed.loop.num_iter == 16 and changed.data.eval_size == 224
    assert changed.data.image_size_schedule == ((128, 0.0), (160, 0.5))
    assert changed.optimization.ema_decay == 0.0 and changed.optimization.label_smoothing == 0.1
    # The 101-layer archs get the same recipe with NVIDIA's weight decay for them.
    resnext = resolve_config(recipe="fast", arch="resnext101-32x4d", mode="training_benchmark")
    assert resnext.optimization.weight_decay == 6.103515625e-05
    assert resnext.data.image_size_schedule == data.image_size_schedule


def test_an_unknown_recipe_is_one_line_listing_the_valid_ones():
    with pytest.raises(UserError) as raised:
        resolve_config(recipe="ffcv", mode="training_benchmark")
    assert str(raised.value) == "--recipe: 'ffcv' is not one of nvidia-90, nvidia-250, fast"


# --- automatic augmentation in the pipelines -------------------------------------------------


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> str:
    return make_unique_dataset(tmp_path_factory)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


MEAN, STD = np.array(constants.IMAGENET_MEAN_RGB), np.array(constants.IMAGENET_STD_RGB)


def batches(data_dir: str, backend: str, policy: str, *, training=True, n=3, **more):
    """n batches of 8 as 0..255 pixels, and their labels. No crop or flip randomness beyond the
    seeded one: crop area 1 and no flips, one thread, seed 3, so runs compare image by image."""
    config = DataConfig(
        backend=backend, data_dir=data_dir, image_size=32, num_classes=UNIQUE_CLASSES,
        num_threads=1, dali_device="cpu", auto_augment=policy, crop_area_min=1.0,
        random_flip=False, **more,
    )  # fmt: skip
    split = "train" if training else "validation"
    pipeline = build_pipeline(config, split=split, batch_size=8, training=training, seed=3)
    out = list(pipeline.dataset.take(n))
    images = np.concatenate([x.numpy() for x, _ in out]) * STD + MEAN
    return images, np.concatenate([y.numpy() for _, y in out])


def mean_abs_change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image: the mean absolute pixel difference, in 0..255 units."""
    return np.abs(a - b).mean(axis=(1, 2, 3))


POLICIES = ["autoaugment", "randaugment", "trivialaugment"]


@pytest.fixture(scope="module")
def plain_batches(jpegs):
    """Per backend: the plain training images, twice, to show that off means unchanged."""
    return {backend: (batches(jpegs, backend, "none"), batches(jpegs, backend, "none"))
            for backend in ("tf", "dali")}  # fmt: skip


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", ["tf", "dali"])
def test_a_policy_changes_the_training_images_and_nothing_else(
    plain_batches, jpegs, backend, policy
):
    (plain, labels), (again, labels_again) = plain_batches[backend]
    # Off: the same seed gives the same images, so any change below is the policy's.
    np.testing.assert_array_equal(plain, again)
    np.testing.assert_array_equal(labels, labels_again)
    augmented, augmented_labels = batches(jpegs, backend, policy)
    np.testing.assert_array_equal(labels, augmented_labels)  # same records, same labels
    change = mean_abs_change(augmented, plain)
    # randaugment applies 2 ops to every image; the other two pick one sub-policy or op, which
    # may be identity-like (identity, a low bin, a stage that does not run), so most change.
    assert (change > 0.5).mean() >= (0.9 if policy == "randaugment" else 0.5), change
    # Valid pixels: within 0..255 and whole numbers (uint8 in DALI; rounded in tf.data).
    assert augmented.min() > -1e-3 and augmented.max() < 255 + 1e-3
    assert np.abs(augmented - np.round(augmented)).max() < 1e-3
    if backend == "tf":  # stateless draws from the per-image seeds: the same in every run
        np.testing.assert_array_equal(augmented, batches(jpegs, backend, policy)[0])


# --- tf.data's policies are DALI's, op by op ----------------------------------------------------

# The suites as DALI builds them for tfconvnets/data/dali_pipeline.py (no image shapes: absolute
# translations), with tf_augment's counterparts and the number of bins.
SUITES = ("autoaugment", "randaugment", "trivialaugment")


def suites(policy: str) -> tuple[list, list[tf_augment.Augmentation], int]:
    """(DALI's augmentations, tf_augment's, bins) of a policy, in the policy's order."""
    from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment

    if policy == "autoaugment":
        dali = auto_augment.get_image_net_policy()
        names = sorted(dali.augmentations)
        ours = [tf_augment.AUTO_AUGMENT_SUITE[name] for name in names]
        return [dali.augmentations[n] for n in names], ours, dali.num_magnitude_bins
    if policy == "randaugment":
        dali = rand_augment.get_rand_augment_suite()
        return dali, tf_augment.RAND_AUGMENT_SUITE, MAGNITUDE_BINS
    dali = trivial_augment.get_trivial_augment_wide_suite()
    return dali, tf_augment.TRIVIAL_AUGMENT_SUITE, MAGNITUDE_BINS


def dali_parameter(augmentation, bins: int, magnitude_bin: int, negated: bool) -> np.ndarray:
    """DALI's parameter for a bin and sign, from its public setup, as its Augmentation
    documents it: mag_to_param(linspace(*mag_range, bins)[bin] * (-1) ** sign)."""
    if augmentation.mag_range is None:
        return np.array(0, np.float32)
    magnitude = np.linspace(*augmentation.mag_range, bins, dtype=np.float32)[magnitude_bin]
    if augmentation.randomly_negate and negated:
        magnitude = -magnitude
    return np.asarray(augmentation.mag_to_param(magnitude))


def as_dali_parameter(name: str, parameter: float) -> np.ndarray:
    """tf_augment's scalar parameter in the form DALI's op takes."""
    if name in ("shear_x", "translate_x"):
        return np.array([parameter, 0], np.float32)
    if name in ("shear_y", "translate_y"):
        return np.array([0, parameter], np.float32)
    if name == "sharpness":
        blur = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
        identity = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
        return -parameter * blur + (1 + parameter) * identity
    if name in ("posterize", "solarize_add"):
        return np.array(parameter, np.uint8)
    return np.array(parameter, np.float32)


@pytest.mark.parametrize("policy", SUITES)
def test_tf_data_has_dalis_ops_magnitudes_and_parameters(policy):
    """The same ops in the same order (RandAugment and TrivialAugment draw an index into the
    suite), and for every bin and sign the parameter DALI's mapping gives, exactly."""
    dali, ours, bins = suites(policy)
    assert [a.name for a in ours] == [a.name for a in dali]
    for theirs, mine in zip(dali, ours, strict=True):
        assert mine.signed == bool(theirs.randomly_negate), mine.name
        params = mine.params(bins)
        for b in range(bins):
            for sign in (0, 1):
                expected = dali_parameter(theirs, bins, b, bool(sign))
                got = as_dali_parameter(mine.name, params[2 * b + sign])
                np.testing.assert_allclose(got, expected.astype(got.dtype), rtol=1e-6)


def test_tf_data_has_dalis_autoaugment_sub_policies():
    from nvidia.dali.auto_aug import auto_augment

    dali = auto_augment.get_image_net_policy()
    expected = [[(a.name, p, b) for a, p, b in sub] for sub in dali.sub_policies]
    assert [list(sub) for sub in tf_augment.AUTO_AUGMENT_POLICY] == expected


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """4 fixed photo crops of about 128 x 96 px (one portrait), decoded once (PIL): the same
    pixels reach both implementations, so only the ops differ. Large enough that translations
    of the bins checked below keep part of the image."""
    from tfconvnets.data.sample_images import _sample_photos, make_sample_image

    rng, sources = np.random.default_rng(0), _sample_photos()
    return [np.asarray(make_sample_image(sources, rng, (128, 96))) for _ in range(4)]


def run_dali_op(augmentation, images: list[np.ndarray], params: list[np.ndarray]) -> list:
    """DALI's op (on the CPU) on every image at every parameter: [image][parameter] uint8."""
    import inspect

    from nvidia.dali import fn, pipeline_def

    images_in = [image for image in images for _ in params]
    # float64 (a mapping's [m, 0] list) as float32, as DALI's types.Constant takes it.
    params = [p.astype(np.float32) if p.dtype == np.float64 else p for p in params]
    params_in = [p for _ in images for p in params]
    extra = {"fill_value": 128, "interp_type": None}  # the policies' defaults, for the warps
    accepted = inspect.signature(augmentation.op).parameters
    kwargs = {k: v for k, v in extra.items() if k in accepted}

    @pipeline_def(batch_size=len(images_in), num_threads=1, device_id=None)
    def graph():
        data = fn.external_source(source=lambda: images_in, batch=True, layout="HWC")
        param = fn.external_source(source=lambda: params_in, batch=True)
        return augmentation.op(data, param, **kwargs)

    pipeline = graph()
    pipeline.build()
    (out,) = pipeline.run()
    flat = [np.array(out.at(i)) for i in range(len(images_in))]
    return [flat[i * len(params) : (i + 1) * len(params)] for i in range(len(images))]


# Largest difference in 0..255 levels, and largest mean absolute difference per image, from
# DALI's op at the same parameter. Measured on these photos at every bin and sign of the three
# suites: the point ops are the same integer arithmetic (0); colour (YIQ twist) and sharpness
# (3x3 filter) are float sums in another order, so a value at x.5 may round to the next level:
# 1 level in <= 0.09% of values; the warps compute bilinear weights from coordinates mapped in
# another float order (DALI's warp_affine/rotate vs ImageProjectiveTransformV3), 1 level in
# <= 7.3% of values (shear_y of RandAugment at small shears, where many samples fall on
# half-pixel ties), 0 for whole-pixel translations. A wrong op, sign or bin moves values by
# many levels (the negative check below), far beyond 1.
WARPS = ("shear_x", "shear_y", "rotate")
TOLERANCE = {**{w: (1, 0.1) for w in WARPS}, "color": (1, 0.005), "sharpness": (1, 0.005)}
CHECKED_BINS = {"autoaugment": (0, 3, 10), "randaugment": (0, 9, 15, 30),
                "trivialaugment": (0, 9, 15, 30)}  # fmt: skip


def within(name: str, ours: np.ndarray, theirs: np.ndarray) -> tuple[bool, float, float]:
    diff = np.abs(ours.astype(np.float32) - theirs.astype(np.float32))
    max_diff, mean_diff = TOLERANCE.get(name, (0, 0.0))
    return diff.max() <= max_diff and diff.mean() <= mean_diff, diff.max(), diff.mean()


OP_CASES = [
    (policy, name)
    for policy, names in (
        ("autoaugment", sorted(tf_augment.AUTO_AUGMENT_SUITE)),
        ("randaugment", [a.name for a in tf_augment.RAND_AUGMENT_SUITE]),
        ("trivialaugment", [a.name for a in tf_augment.TRIVIAL_AUGMENT_SUITE]),
    )
    for name in names
]


@pytest.mark.parametrize("policy, name", OP_CASES, ids=[f"{p}-{n}" for p, n in OP_CASES])
def test_each_tf_data_op_matches_dalis_at_the_same_bin_and_sign(photos, policy, name):
    """tf_augment's op at its own parameter for (bin, sign) against DALI's op at the parameter
    DALI's mapping gives, on the same decoded photos; then, as a check that the comparison
    would catch a mistake, ours at the second bin checked against DALI's at the third (a wrong
    magnitude) and at the other sign (a wrong sign) are outside the tolerance."""
    dali, ours, bins = suites(policy)
    index = [a.name for a in ours].index(name)
    theirs, mine = dali[index], ours[index]
    checked = CHECKED_BINS[policy] if mine.mag_range else (0,)
    signs = (0, 1) if mine.signed else (0,)
    keys = [(b, s) for b in checked for s in signs]
    dali_params = [dali_parameter(theirs, bins, b, bool(s)) for b, s in keys]
    outputs = run_dali_op(theirs, photos, dali_params)
    table = mine.params(bins)
    op = tf_augment.OPS[name]
    for image, expected in zip(photos, outputs, strict=True):
        ours_out = {}
        for key, reference in zip(keys, expected, strict=True):
            param = tf.constant(table[2 * key[0] + key[1]])
            ours_out[key] = op(tf.constant(image, tf.float32), param).numpy()
            ok, max_diff, mean_diff = within(name, ours_out[key], reference)
            assert ok, (name, key, image.shape, max_diff, mean_diff)
        if mine.mag_range is None:
            continue
        low, high = checked[1], checked[2]
        wrong = [expected[keys.index((high, 0))]]  # a wrong magnitude
        if mine.signed:
            wrong.append(expected[keys.index((low, 1))])  # a wrong sign
        for reference in wrong:
            assert not within(name, ours_out[(low, 0)], reference)[0], (name, image.shape)


# --- test-time resolution ------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", ["tf", "dali"])
def test_eval_batches_come_at_the_eval_size_and_are_never_augmented(jpegs, backend, policy):
    sized = dict(training=False, n=1, eval_image_size=64)
    plain, labels = batches(jpegs, backend, "none", **sized)
    augmented, augmented_labels = batches(jpegs, backend, policy, **sized)
    assert plain.shape == (8, 64, 64, 3)
    np.testing.assert_array_equal(plain, augmented)
    np.testing.assert_array_equal(labels, augmented_labels)
    train, _ = batches(jpegs, backend, "none", n=1, eval_image_size=64)
    assert train.shape == (8, 32, 32, 3)  # training stays at --image_size


def test_the_eval_crop_ratio_sets_the_resize_before_the_crop(jpegs):
    """A ratio of 1 crops the resized image's center square: the 48x40 images keep more of
    their width than at 0.875, so the two differ; both are 32 x 32."""
    tight, _ = batches(jpegs, "tf", "none", training=False, n=1)
    whole, _ = batches(jpegs, "tf", "none", training=False, n=1, eval_crop_ratio=1.0)
    assert tight.shape == whole.shape == (8, 32, 32, 3)
    assert mean_abs_change(tight, whole).min() > 1


def test_synthetic_eval_batches_come_at_the_eval_size():
    config = DataConfig(backend="synthetic", image_size=32, eval_image_size=64, num_classes=4)
    eval_data = build_pipeline(config, split="validation", batch_size=2, training=False)
    train_data = build_pipeline(config, split="train", batch_size=2, training=True)
    assert next(iter(eval_data.dataset))[0].shape == (2, 64, 64, 3)
    assert next(iter(train_data.dataset))[0].shape == (2, 32, 32, 3)


def test_the_model_takes_any_size_only_when_it_needs_to(monkeypatch):
    import tfconvnets.runtime.factory

    shapes = []
    monkeypatch.setattr(
        tfconvnets.runtime.factory, "create_model", lambda *a, **k: shapes.append(k["input_shape"])
    )
    for values in ({}, {"eval_image_size": 256}, {"image_size_schedule": ((160, 0.0),)}):
        tfconvnets.runtime.factory.build_model(resolve_config(mode="training_benchmark", **values))
    assert shapes == [(224, 224, 3), (None, None, 3), (None, None, 3)]


# --- the loop at several sizes ---------------------------------------------------------------


def any_size_model(config):
    """tests/test_trainer.py's tiny ResNet, with an input of any size."""
    spec = ResNetSpec(
        depths=(1, 1, 1, 1), widths=(4, 8, 8, 8), out_channels=(8, 16, 16, 16), stem_channels=8
    )
    return build_resnet(spec, CLASSES, input_shape=(None, None, 3), seed=config.loop.seed)


def sized_pipeline(size: int, training: bool) -> Pipeline:
    """STEPS_PER_EPOCH batches of `size` px per epoch (eval: one pass)."""
    rng = np.random.default_rng(size)
    n = BATCH * STEPS_PER_EPOCH
    images = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    labels = (np.arange(n) % CLASSES).astype(np.int32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH, drop_remainder=True)
    return Pipeline(ds.repeat() if training else ds, n, n, STEPS_PER_EPOCH)


def resizing_trainer(
    config, requested: list[tuple[int, int]], *, eval_size: int | None = None
) -> Trainer:
    from tfconvnets.runtime.reporting import Reporter

    def pipeline_for(size: int, epoch: int) -> Pipeline:
        requested.append((size, epoch))
        return sized_pipeline(size, True)

    reporter = Reporter(enabled=True, log_path=None, tensorboard_dir=None, progress=False)
    first = config.data.first_train_size
    eval_data = sized_pipeline(eval_size, False) if eval_size else None
    return Trainer(
        config, SINGLE, any_size_model(config), sized_pipeline(first, True), reporter,
        eval_data, pipeline_for=pipeline_for,
    )  # fmt: skip


def test_size_at_epoch_starts_each_size_at_its_fraction_of_the_epochs():
    schedule = ((160, 0.0), (192, 0.5), (224, 0.9))
    sizes = [size_at_epoch(schedule, e, 10, 999) for e in range(10)]
    assert sizes == [160] * 5 + [192] * 4 + [224]
    assert size_at_epoch((), 3, 10, 224) == 224  # no schedule: --image_size


def test_progressive_resizing_rebuilds_the_pipeline_at_epoch_ends_and_retraces_once(
    tmp_path, caplog
):
    """Sizes 32 then 64 from half of 2 epochs (3 steps each): the pipeline of epoch 2 is made at
    64, and the train step traces once per size, not per step. The eval runs at 48."""
    config = small_config(
        tmp_path, num_iter=2, image_size_schedule=((32, 0.0), (64, 0.5)), eval_image_size=48,
        eval_every=2,
    )  # fmt: skip
    requested: list[tuple[int, int]] = []
    trainer = resizing_trainer(config, requested, eval_size=48)
    with caplog.at_level(py_logging.INFO):
        results = trainer.train()
    assert results["step"] == 2 * STEPS_PER_EPOCH
    assert requested == [(64, 1)]  # (size, 0-based epoch); epoch 0's was given
    assert "image size 32 from epoch 1 (the train step compiles once per size)" in caplog.text
    assert "image size 64 from epoch 2 (the train step compiles once per size)" in caplog.text
    assert trainer.train_step._step.experimental_get_tracing_count() == 2
    assert results["top1_accuracy"] >= 0  # evaluated at 48 px, a size it never trained at
    assert [trainer.train_size(s) for s in range(6)] == [32] * 3 + [64] * 3


def test_a_resumed_run_continues_at_the_size_of_its_epoch(tmp_path, caplog, monkeypatch):
    """4 epochs of 3 steps at 32@0,64@0.5: 32 in epochs 1-2, 64 in 3-4. Resumed in the middle
    of epoch 3 (step 7, as after a preemption; the restore is stubbed), the loop goes on at 64,
    not at the size of epoch 1 it was built with."""
    config = small_config(
        tmp_path, num_iter=4, run_iter=1, image_size_schedule=((32, 0.0), (64, 0.5))
    )
    requested: list[tuple[int, int]] = []
    trainer = resizing_trainer(config, requested)
    monkeypatch.setattr(trainer.checkpoints, "restore", lambda *a, **k: 7)
    assert [trainer.train_size(s) for s in (0, 5, 6, 7, 11)] == [32, 32, 64, 64, 64]
    with caplog.at_level(py_logging.INFO):
        assert trainer.train()["step"] == 10  # --run_iter=1: one epoch's worth of steps
    assert "resumed at step 7" in caplog.text
    # The epoch-1 pipeline it was given is never read; epoch 3's skips its 1 trained batch.
    assert requested == [(64, 2), (64, 3)]
    assert "exact resume: skipping the 1 batch(es) of epoch 3 already trained on" in caplog.text
    assert "image size 64 from epoch 3" in caplog.text
    assert trainer.train_step._step.experimental_get_tracing_count() == 1


# --- the export after training -------------------------------------------------------------


def test_the_export_after_training_gets_the_ema_weights_at_the_eval_size(tmp_path, monkeypatch):
    """`--mode=train` through `tfconvnets.runtime.modes.train`, in process, on the tiny model: the export
    runs with the averaged weights swapped in, at --eval_image_size, and the trained weights are
    back afterwards. (The artifact writer is recorded, not run: what it would write is the
    model's weights at the call, and export_artifacts' own tests cover the writing.)"""
    import tfconvnets.deploy.artifacts
    import tfconvnets.runtime.modes
    from tfconvnets.runtime.process import Context
    from tfconvnets.runtime.reporting import Reporter

    config = small_config(
        tmp_path, mode="train", ema_decay=0.5, num_iter=2, iter_unit="batch",
        eval_image_size=64, export_dir=str(tmp_path / "export"),
    )  # fmt: skip
    trainers, exported = [], []

    class RecordedTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(tfconvnets.runtime.modes, "Trainer", RecordedTrainer)
    monkeypatch.setattr(tfconvnets.runtime.modes, "build_model", any_size_model)

    def record(model, export_dir, formats, *, image_size, **_):
        exported.append(([v.numpy().copy() for v in model.trainable_variables], image_size))
        return {}

    monkeypatch.setattr(tfconvnets.deploy.artifacts, "export_artifacts", record)
    reporter = Reporter(enabled=True, log_path=None, tensorboard_dir=None, progress=False)
    results = tfconvnets.runtime.modes.train(Context(config, SINGLE, reporter))
    assert results[0]["step"] == 2 and results[0]["export_dir"] == config.run.export_dir
    ((weights, image_size),) = exported
    assert image_size == 64
    (trainer,) = trainers
    for w, a in zip(weights, trainer.ema.averages, strict=True):
        np.testing.assert_array_equal(w, a.numpy())
    live = [v.numpy() for v in trainer.model.trainable_variables]  # the trained ones, back
    assert any(not np.array_equal(w, v) for w, v in zip(weights, live, strict=True))
