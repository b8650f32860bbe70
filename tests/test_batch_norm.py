"""The fused batch norm the TensorFlow runtime trains with, against Keras's own layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
from tfconvnets.batch_norm import FusedBatchNormalization
from tfconvnets.config import resolve_config
from tfconvnets.ema import batch_norm_layers
from tfconvnets.runtime.factory import build_model


def _pair(axis: int = -1, momentum: float = 0.9) -> tuple:
    """A Keras BN and a fused one with the same (non-trivial) weights and statistics."""
    rng = np.random.default_rng(0)
    channels = 5
    made = []
    for cls in (keras.layers.BatchNormalization, FusedBatchNormalization):
        layer = cls(axis=axis, momentum=momentum, epsilon=1e-5)
        shape = (2, 6, 7, channels) if axis == -1 else (2, channels, 6, 7)
        layer.build(shape)
        made.append(layer)
    for values in zip(*(layer.weights for layer in made), strict=True):
        start = rng.uniform(0.5, 1.5, values[0].shape).astype("float32")
        for v in values:
            v.assign(start)
    return made


def _batch(shape: tuple, seed: int = 1) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    # An offset mean and a large spread, as activations have: E[x^2]-E[x]^2 would lose digits.
    return tf.constant(rng.normal(3.0, 4.0, shape).astype("float32"))


def _train_call(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * tf.cos(y))  # a gradient that is not the same everywhere
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    return y, grads


def test_a_training_step_matches_keras_outputs_gradients_and_statistics():
    keras_bn, fused_bn = _pair()
    start_variance = keras_bn.moving_variance.numpy()
    x = _batch((2, 6, 7, 5))
    y_keras, grads_keras = _train_call(keras_bn, x)
    y_fused, grads_fused = _train_call(fused_bn, x)
    np.testing.assert_allclose(y_fused, y_keras, rtol=1e-4, atol=1e-5)
    for fused, expected in zip(grads_fused, grads_keras, strict=True):
        np.testing.assert_allclose(fused, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused_bn.moving_mean, keras_bn.moving_mean, rtol=1e-6)
    # Keras averages the biased batch variance; the op returns the unbiased one (n / (n - 1)
    # larger: 1.2% here), which would be off by far more than the tolerance.
    n = x.shape[0] * x.shape[1] * x.shape[2]
    unbiased = 0.9 * start_variance + 0.1 * np.var(x.numpy(), axis=(0, 1, 2)) * n / (n - 1)
    assert np.all(np.abs(unbiased - keras_bn.moving_variance) > 1e-3 * unbiased)
    np.testing.assert_allclose(fused_bn.moving_variance, keras_bn.moving_variance, rtol=1e-5)


def test_moving_statistics_are_the_batch_ones_with_momentum_zero():
    """What the EMA's statistics re-estimation relies on (tfconvnets.ema)."""
    _, fused_bn = _pair(momentum=0.0)
    x = _batch((2, 6, 7, 5), seed=2)
    fused_bn(x, training=True)
    values = x.numpy()
    np.testing.assert_allclose(fused_bn.moving_mean, values.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(fused_bn.moving_variance, values.var(axis=(0, 1, 2)), rtol=1e-5)


def test_inference_is_keras_own_path_bit_for_bit():
    keras_bn, fused_bn = _pair()
    x = _batch((2, 6, 7, 5), seed=3)
    np.testing.assert_array_equal(fused_bn(x, training=False), keras_bn(x, training=False))
    fused_bn.trainable = False  # frozen: Keras's inference behaviour, also under training=True
    keras_bn.trainable = False
    np.testing.assert_array_equal(fused_bn(x, training=True), keras_bn(x, training=True))


def test_the_fused_op_is_what_a_training_graph_runs():
    _, fused_bn = _pair()
    x = _batch((2, 6, 7, 5))
    graph = tf.function(lambda x: _train_call(fused_bn, x)).get_concrete_function(x).graph
    op_types = {op.type for op in graph.get_operations()}
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= op_types
    assert "Mean" not in op_types  # no moments computed beside it


def test_mixed_precision_keeps_float16_activations_and_float32_statistics():
    keras_bn, fused_bn = _pair()
    x = tf.cast(_batch((2, 6, 7, 5), seed=4), tf.float16)
    policy = keras.DTypePolicy("mixed_float16")
    for layer in (keras_bn, fused_bn):
        layer.dtype_policy = policy
    y_keras = keras_bn(x, training=True)
    y_fused = fused_bn(x, training=True)
    assert y_fused.dtype == tf.float16 and fused_bn.moving_variance.dtype == "float32"
    np.testing.assert_allclose(
        tf.cast(y_fused, tf.float32), tf.cast(y_keras, tf.float32), rtol=1e-2, atol=1e-2
    )
    np.testing.assert_allclose(fused_bn.moving_variance, keras_bn.moving_variance, rtol=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_the_flag_picks_the_layer_and_the_weights_stay_the_same(fused):
    given = {"arch": "resnet26", "image_size": 32, "mode": "training_benchmark"}
    model = build_model(resolve_config(given, fused_batch_norm=fused))
    layers = batch_norm_layers(model)
    assert layers and all(isinstance(layer, FusedBatchNormalization) == fused for layer in layers)
    reference = build_model(resolve_config(given))
    assert [v.path for v in model.variables] == [v.path for v in reference.variables]
