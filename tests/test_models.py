"""Model zoo tests: exact architecture, init, dtypes, XLA training step, MACs (CPU, TF backend).

The full-size models are built once per module (a 101-layer build takes seconds on two
cores); small 32x32 builds serve the runtime checks. Native grouped convolutions only run
on a TF CPU under XLA, hence the `jit_compile=True` functions.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfconvnets.models import (
    MODEL_SPECS,
    ResNetSpec,
    SplitGroupedConv2D,
    build_resnet,
    count_macs,
    create_model,
    list_models,
)
from tfconvnets.models import resnet as resnet_module

ARCHS = ("resnet26", "resnet50", "resnext101-32x4d", "se-resnext101-32x4d")
# The XLA compiles (a training step, forward passes under mixed policies) run on each distinct
# block, one per stage, at the arch's own widths, groups and SE: XLA lowers op by op, so more of
# the same blocks add compile time (25-40 s for a 101-layer training step here) and nothing to
# prove. The full depths compile with XLA in test_forward_at_224 and train through main.py in
# tests/test_runtime.py. resnet26 has ResNet-50's blocks, and resnext101's are se-resnext101's
# without the SE (their specs differ in se_ratio alone): every op XLA lowers for them is here.
BLOCK_ARCHS = ("resnet50", "se-resnext101-32x4d")
SMALL_SHAPE = (32, 32, 3)

# torchvision / timm parameter counts with 1000 classes.
EXPECTED_TRAINABLE_PARAMS = {
    "resnet26": 15_995_176,
    "resnet50": 25_557_032,
    "resnext101-32x4d": 44_177_704,
    "se-resnext101-32x4d": 48_955_416,
}
# Published forward GMACs at 224 (timm); count_macs leaves out BN / elementwise ops.
EXPECTED_MACS = {
    "resnet26": 2.36e9,
    "resnet50": 4.11e9,
    "resnext101-32x4d": 8.01e9,
    "se-resnext101-32x4d": 8.02e9,
}
DEPTHS = {
    "resnet26": (2, 2, 2, 2),
    "resnet50": (3, 4, 6, 3),
    "resnext101-32x4d": (3, 4, 23, 3),
    "se-resnext101-32x4d": (3, 4, 23, 3),
}

# A 4-block model with every feature (groups, SE) for quick runtime comparisons.
TINY_SPEC = ResNetSpec(
    depths=(1, 1, 1, 1),
    widths=(8, 16, 32, 64),
    out_channels=(16, 32, 64, 128),
    groups=4,
    se_ratio=4,
    stem_channels=8,
)


class _ModelCache(dict):
    """Builds each full-size model on first use."""

    def __missing__(self, arch: str) -> keras.Model:
        model = create_model(arch, seed=0)
        self[arch] = model
        return model


@pytest.fixture(scope="module")
def full_models() -> dict[str, keras.Model]:
    """The models at 224x224 with 1000 classes, shared by the module's tests."""
    return _ModelCache()


@pytest.fixture
def dtype_policy(request):
    keras.mixed_precision.set_dtype_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def one_block_per_stage(arch: str, *, seed: int = 0, **build_options) -> keras.Model:
    """`arch`'s blocks, one per stage, at 32x32 with 10 classes (its layer names too): its
    widths, groups and SE at a fraction of the build, trace and compile time of its depths."""
    spec = dataclasses.replace(MODEL_SPECS[arch], depths=(1, 1, 1, 1))
    return build_resnet(spec, 10, name=arch, input_shape=SMALL_SHAPE, seed=seed, **build_options)


def _images(shape: tuple[int, ...], seed: int = 0) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype("float32"))


def _block_prefixes(arch: str) -> list[str]:
    return [
        f"stage{stage}_block{block}"
        for stage, depth in enumerate(DEPTHS[arch], start=1)
        for block in range(1, depth + 1)
    ]


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


# --- registry and argument checks -------------------------------------------------------


def test_list_models():
    assert list_models() == list(ARCHS)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError) as error:
        create_model("resnet18")
    for arch in ARCHS:
        assert arch in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_format": "NHWC"}, "channels_last"),
        ({"grouped_conv": "xla"}, "split"),
        ({"num_classes": 0}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("resnet50", **kwargs)


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="needs a GPU-less host")
def test_channels_first_refused_on_cpu():
    with pytest.raises(ValueError, match="NCHW convolutions are GPU-only"):
        create_model("resnet50", data_format="channels_first")


def test_channels_first_graph(monkeypatch):
    """NCHW builds the same network (checked symbolically: running it needs a GPU)."""
    monkeypatch.setattr(resnet_module, "_gpu_available", lambda: True)
    nchw = create_model("resnet50", 10, input_shape=(64, 64, 3), data_format="channels_first")
    nhwc = create_model("resnet50", 10, input_shape=(64, 64, 3))
    assert nchw.input.shape == (None, 3, 64, 64)
    assert nchw.get_layer("stage1_block1_out").output.shape == (None, 256, 16, 16)
    assert nchw.get_layer("stem_bn").axis == 1
    assert [v.shape for v in nchw.weights] == [v.shape for v in nhwc.weights]
    assert count_macs(nchw) == count_macs(nhwc)
    assert nchw.output.shape == (None, 10)


def test_models_package_does_not_import_tensorflow():
    package = pathlib.Path(__file__).resolve().parents[1] / "tfconvnets" / "models"
    pattern = re.compile(r"^\s*(import|from)\s+tensorflow\b", re.MULTILINE)
    for source in package.glob("*.py"):
        assert not pattern.search(source.read_text()), source


# --- architecture -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_trainable_param_count(full_models, arch):
    model = full_models[arch]
    count = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert count == EXPECTED_TRAINABLE_PARAMS[arch]
    assert model.name == arch


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_names_follow_the_scheme(full_models, arch):
    model = full_models[arch]
    for name in ("stem_conv", "stem_bn", "stem_relu", "stem_pool", "avg_pool", "classifier"):
        assert _has_layer(model, name), name
    assert not _has_layer(model, "dropout")  # dropout=0 adds no layer
    se = arch.startswith("se-")
    for prefix in _block_prefixes(arch):
        for part in ("conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "relu1", "relu2"):
            assert _has_layer(model, f"{prefix}_{part}"), f"{prefix}_{part}"
        for part in ("add", "out"):
            assert _has_layer(model, f"{prefix}_{part}"), f"{prefix}_{part}"
        for part in ("se_reduce", "se_expand"):
            assert _has_layer(model, f"{prefix}_{part}") == se, f"{prefix}_{part}"
        is_first = prefix.endswith("_block1")
        assert _has_layer(model, f"{prefix}_shortcut_conv") == is_first
        assert _has_layer(model, f"{prefix}_shortcut_bn") == is_first
    block_names = {
        layer.name.split("_")[0] + "_" + layer.name.split("_")[1]
        for layer in model.layers
        if layer.name.startswith("stage")
    }
    assert block_names == set(_block_prefixes(arch))


@pytest.mark.parametrize("arch", ARCHS)
def test_v1_5_strides_and_symmetric_padding(full_models, arch):
    model = full_models[arch]
    stem = model.get_layer("stem_conv")
    assert (stem.kernel_size, stem.strides, stem.padding) == ((7, 7), (2, 2), "valid")
    assert model.get_layer("stem_pad").padding == ((3, 3), (3, 3))
    assert model.get_layer("stem_pool_pad").padding == ((1, 1), (1, 1))
    pool = model.get_layer("stem_pool")
    assert (pool.pool_size, pool.strides, pool.padding) == ((3, 3), (2, 2), "valid")

    for prefix in _block_prefixes(arch):
        stride = 2 if prefix.endswith("_block1") and not prefix.startswith("stage1") else 1
        conv1, conv2, conv3 = (model.get_layer(f"{prefix}_conv{i}") for i in (1, 2, 3))
        assert conv1.kernel_size == (1, 1) and conv1.strides == (1, 1), prefix
        assert conv2.kernel_size == (3, 3) and conv2.strides == (stride, stride), prefix
        assert conv3.kernel_size == (1, 1) and conv3.strides == (1, 1), prefix
        assert model.get_layer(f"{prefix}_pad2").padding == ((1, 1), (1, 1))
        assert conv2.input is model.get_layer(f"{prefix}_pad2").output
        if prefix.endswith("_block1"):
            shortcut = model.get_layer(f"{prefix}_shortcut_conv")
            assert shortcut.kernel_size == (1, 1) and shortcut.strides == (stride, stride)

    # Stage outputs 256..2048 at strides 4..32.
    for stage, (channels, size) in enumerate(
        zip((256, 512, 1024, 2048), (56, 28, 14, 7), strict=True), 1
    ):
        assert model.get_layer(f"stage{stage}_block1_out").output.shape == (
            None,
            size,
            size,
            channels,
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_configs(full_models, arch):
    model = full_models[arch]
    groups = resnet_module.MODEL_SPECS[arch].groups
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.momentum == pytest.approx(0.9) and layer.epsilon == pytest.approx(1e-5)
            assert layer.axis in (-1, 3)
        if isinstance(layer, keras.layers.Conv2D):
            is_se = "_se_" in layer.name
            assert layer.use_bias == is_se, layer.name
            assert layer.padding == "valid", layer.name
            init = layer.kernel_initializer.get_config()
            assert (init["scale"], init["mode"], init["distribution"]) == (
                2.0,
                "fan_in",
                "truncated_normal",
            )
            expected_groups = groups if layer.name.endswith("_conv2") else 1
            assert layer.groups == expected_groups, layer.name
    classifier = model.get_layer("classifier")
    assert classifier.use_bias and classifier.units == 1000
    assert classifier.dtype_policy.compute_dtype == "float32"


@pytest.mark.parametrize("arch", ARCHS)
def test_residual_wiring(full_models, arch):
    """SE scales bn3's output and feeds the add; without SE, bn3 feeds the add directly."""
    model = full_models[arch]
    for prefix in _block_prefixes(arch):
        bn3 = model.get_layer(f"{prefix}_bn3").output
        add_inputs = model.get_layer(f"{prefix}_add").input
        if arch.startswith("se-"):
            scale = model.get_layer(f"{prefix}_se_scale")
            assert scale.input[0] is bn3
            assert scale.input[1] is model.get_layer(f"{prefix}_se_gate").output
            assert model.get_layer(f"{prefix}_se_pool").input is bn3
            reduce, expand = (model.get_layer(f"{prefix}_se_{n}") for n in ("reduce", "expand"))
            channels = bn3.shape[-1]
            assert (reduce.filters, expand.filters) == (channels // 16, channels)
            assert add_inputs[0] is scale.output
        else:
            assert add_inputs[0] is bn3
        if prefix.endswith("_block1"):
            assert add_inputs[1] is model.get_layer(f"{prefix}_shortcut_bn").output
        else:
            stage, block = re.fullmatch(r"stage(\d+)_block(\d+)", prefix).groups()
            previous = f"stage{stage}_block{int(block) - 1}_out"
            assert add_inputs[1] is model.get_layer(previous).output
        assert model.get_layer(f"{prefix}_out").input is model.get_layer(f"{prefix}_add").output


# --- cost -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_count_macs_matches_published_figures(full_models, arch):
    assert count_macs(full_models[arch]) == pytest.approx(EXPECTED_MACS[arch], rel=0.01)


def test_count_macs_counts_grouped_convs_and_dense_exactly():
    inputs = keras.Input((10, 10, 8))
    x = keras.layers.Conv2D(16, 3, groups=4, use_bias=False)(inputs)  # 8x8x16 outputs
    x = SplitGroupedConv2D(8, 1, groups=2)(x)  # 8x8x8 outputs
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)
    expected = 8 * 8 * 16 * (3 * 3 * 2) + 8 * 8 * 8 * (1 * 1 * 8) + 8 * 5
    assert count_macs(model) == expected


# --- init -------------------------------------------------------------------------------


def test_seed_makes_init_reproducible():
    first, same, other = (
        create_model("resnet50", 10, input_shape=SMALL_SHAPE, seed=seed) for seed in (1, 1, 2)
    )
    for a, b in zip(first.weights, same.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    kernels = [
        (a, b) for a, b in zip(first.weights, other.weights, strict=True) if "kernel" in a.path
    ]
    assert all(not np.array_equal(a.numpy(), b.numpy()) for a, b in kernels)
    # Every conv gets its own seed: no two same-shape kernels repeat each other.
    stage1_kernels = [first.get_layer(f"stage1_block{b}_conv2").kernel.numpy() for b in (1, 2, 3)]
    assert not np.array_equal(stage1_kernels[0], stage1_kernels[1])


def test_init_statistics_and_zero_gamma():
    model = create_model(
        "resnet50", 10, input_shape=SMALL_SHAPE, seed=3, zero_init_last_bn_gamma=True
    )
    kernel = model.get_layer("stage3_block2_conv2").kernel.numpy()  # fan_in 3*3*256
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / (3 * 3 * 256)), rel=0.05)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            expected_gamma = 0.0 if layer.name.endswith("_bn3") else 1.0
            np.testing.assert_array_equal(layer.gamma.numpy(), expected_gamma, layer.name)
            np.testing.assert_array_equal(layer.beta.numpy(), 0.0)


def test_dropout_layer():
    model = create_model("resnet50", 10, input_shape=SMALL_SHAPE, dropout=0.2)
    dropout = model.get_layer("dropout")
    assert dropout.rate == pytest.approx(0.2)
    assert model.get_layer("classifier").input is dropout.output


# --- runtime ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("arch", BLOCK_ARCHS)
def test_float32_logits_under_dtype_policies(dtype_policy, arch):
    # The float32 policy is covered by the training-step test (it checks the logits too).
    model = one_block_per_stage(arch)
    compute_dtype = keras.mixed_precision.dtype_policy().compute_dtype
    assert model.get_layer("stage1_block1_conv2").compute_dtype == compute_dtype
    forward = tf.function(lambda x: model(x, training=False), jit_compile=True)
    logits = forward(_images((2, *SMALL_SHAPE)))
    assert logits.shape == (2, 10)
    assert logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()


@pytest.mark.parametrize("arch", BLOCK_ARCHS)
def test_xla_training_step_changes_every_weight(arch):
    assert keras.mixed_precision.dtype_policy().name == "float32"
    model = one_block_per_stage(arch)
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    optimizer.build(model.trainable_variables)
    images, labels = _images((2, *SMALL_SHAPE)), tf.constant([1, 7])

    @tf.function(jit_compile=True)
    def loss_and_grads(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            )
        return logits, loss, tape.gradient(loss, model.trainable_variables)

    before = [v.numpy() for v in model.trainable_variables]
    logits, loss, grads = loss_and_grads(images, labels)
    assert logits.shape == (2, 10) and logits.dtype == tf.float32
    optimizer.apply(grads, model.trainable_variables)
    assert np.isfinite(loss.numpy())
    unchanged = [
        v.path
        for v, old in zip(model.trainable_variables, before, strict=True)
        if np.array_equal(v.numpy(), old)
    ]
    assert not unchanged


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_at_224(full_models, arch):
    model = full_models[arch]
    forward = tf.function(lambda x: model(x, training=False), jit_compile=True)
    logits = forward(_images((1, 224, 224, 3)))
    assert logits.shape == (1, 1000) and logits.dtype == tf.float32
    assert np.isfinite(logits.numpy()).all()


def test_split_and_native_grouped_convs_are_interchangeable():
    native = build_resnet(TINY_SPEC, 10, input_shape=SMALL_SHAPE, seed=5)
    split = build_resnet(TINY_SPEC, 10, input_shape=SMALL_SHAPE, seed=6, grouped_conv="split")
    assert isinstance(split.get_layer("stage1_block1_conv2"), SplitGroupedConv2D)
    # Same variables in the same order under the same paths: positional checkpoints
    # (set_weights, the runtime's variables.npz) move between the two implementations.
    assert [(v.path, v.shape) for v in native.weights] == [(v.path, v.shape) for v in split.weights]
    split.set_weights(native.get_weights())

    images = _images((2, *SMALL_SHAPE))
    expected = tf.function(lambda x: native(x, training=False), jit_compile=True)(images)
    actual = split(images, training=False)  # plain TF CPU kernels, no XLA
    scale = float(np.abs(expected.numpy()).max())
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5 * scale)


def test_same_seed_same_weights_for_both_grouped_conv_impls():
    native = build_resnet(TINY_SPEC, 10, input_shape=SMALL_SHAPE, seed=11)
    split = build_resnet(TINY_SPEC, 10, input_shape=SMALL_SHAPE, seed=11, grouped_conv="split")
    for a, b in zip(native.weights, split.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_split_grouped_conv_serializes():
    layer = SplitGroupedConv2D(8, 3, strides=2, groups=4, name="g")
    clone = SplitGroupedConv2D.from_config(layer.get_config())
    assert (clone.filters, clone.kernel_size, clone.strides, clone.groups) == (
        8,
        (3, 3),
        (2, 2),
        4,
    )
