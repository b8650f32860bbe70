"""The grouped convolution the TensorFlow runtime trains with on a CPU with oneDNN, against the
split one (32 plain convolutions) that it replaces there."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
import tfconvnets.runtime.factory
from tests.test_models import one_block_per_stage
from tfconvnets.config import resolve_config
from tfconvnets.console import onednn_setting
from tfconvnets.grouped_conv import DirectGroupedConv2D
from tfconvnets.models import MODEL_SPECS, SplitGroupedConv2D, build_resnet
from tfconvnets.runtime.factory import build_model

ARCH = "se-resnext101-32x4d"  # grouped convs and SE


def direct_model(seed: int):
    return one_block_per_stage(ARCH, seed=seed, grouped_conv_layer=DirectGroupedConv2D)


def training_outputs(model, images, labels) -> list[np.ndarray]:
    """Logits, loss gradients of every trainable variable, and the BN statistics after one
    training-mode call, in TensorFlow's CPU kernels (no XLA)."""

    @tf.function(autograph=False)
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return logits, tape.gradient(loss, model.trainable_variables)

    logits, grads = step(images, labels)
    statistics = [v for v in model.non_trainable_variables if "moving_" in v.path]
    return [logits.numpy(), *(g.numpy() for g in grads), *(v.numpy() for v in statistics)]


def test_oneDNN_is_on_in_this_process():
    """What the tests below need: TensorFlow's Eigen kernels have no grouped gradients."""
    assert onednn_setting().enabled is True, onednn_setting().describe()


def test_a_training_step_equals_the_split_layers_and_the_weights_move_between_them():
    split = one_block_per_stage(ARCH, seed=4, grouped_conv="split")
    direct = direct_model(seed=4)
    assert isinstance(split.get_layer("stage1_block1_conv2"), SplitGroupedConv2D)
    assert isinstance(direct.get_layer("stage1_block1_conv2"), DirectGroupedConv2D)
    assert [(v.path, v.shape) for v in direct.weights] == [(v.path, v.shape) for v in split.weights]
    for a, b in zip(direct.weights, split.weights, strict=True):  # the same seed, same draws
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(4, 32, 32, 3)).astype("float32"))
    labels = tf.constant([1, 7, 3, 3])
    expected = training_outputs(split, images, labels)
    actual = training_outputs(direct, images, labels)
    assert len(actual) == len(expected) > 100
    for got, want in zip(actual, expected, strict=True):
        scale = float(np.abs(want).max()) or 1.0
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_the_graph_has_one_convolution_per_conv_layer_and_no_nested_function():
    direct = direct_model(seed=0)
    graph = (
        tf.function(lambda x: direct(x, training=True))
        .get_concrete_function(tf.TensorSpec((2, 32, 32, 3)))
        .graph
    )
    convs = [op for op in graph.get_operations() if op.type == "Conv2D"]
    conv_layers = [layer for layer in direct.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == len(conv_layers) == 1 + 6 * 4  # stem; per block 1x1, 3x3, 1x1, SE 2
    # Keras's own grouped Conv2D is a nested XLA function here: a (Stateful)PartitionedCall.
    assert not [op for op in graph.get_operations() if "PartitionedCall" in op.type]


LAYERS = {"direct": DirectGroupedConv2D, "split": SplitGroupedConv2D, "native": keras.layers.Conv2D}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"onednn": True}, "direct"),
        ({"onednn": False}, "split"),
        ({"onednn": True, "xla": True}, "native"),
        ({"onednn": True, "gpu_id": 0}, "native"),
    ],
)
def test_the_runtime_picks_the_direct_layer_on_a_cpu_with_oneDNN(changes, expected, monkeypatch):
    config = resolve_config({"arch": ARCH, "image_size": 32, "mode": "training_benchmark"})
    config = dataclasses.replace(config, compute=config.compute.replace(**changes))
    assert config.compute.grouped_conv == expected

    def blocks_only(arch: str, num_classes: int, **kwargs):  # the runtime's choice, 4 blocks
        spec = dataclasses.replace(MODEL_SPECS[arch], depths=(1, 1, 1, 1))
        return build_resnet(spec, num_classes, name=arch, **kwargs)

    monkeypatch.setattr(tfconvnets.runtime.factory, "create_model", blocks_only)
    layer = build_model(config).get_layer("stage1_block1_conv2")
    assert type(layer) is LAYERS[expected]
