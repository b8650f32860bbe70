"""The product's SGD (one fused op per variable) against Keras's own SGD."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfconvnets.training import MomentumSGD, make_optimizer

SHAPES = [(3, 3, 4, 8), (8,), (5, 2)]


def _variables() -> list:
    rng = np.random.default_rng(0)
    return [
        keras.Variable(rng.normal(size=s).astype("float32"), name=f"v{i}")
        for i, s in enumerate(SHAPES)
    ]


def _gradients(step: int) -> list:
    rng = np.random.default_rng(step + 1)
    return [tf.constant(rng.normal(size=s).astype("float32")) for s in SHAPES]


def _train(optimizer, steps: int = 5) -> tuple[list, list]:
    variables = _variables()
    optimizer.build(variables)
    apply = tf.function(lambda grads: optimizer.apply(grads, variables))
    for step in range(steps):
        apply(_gradients(step))
    return [v.numpy() for v in variables], [v.numpy() for v in optimizer.variables]


def test_the_weights_and_momenta_are_keras_sgds_bit_for_bit():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 2, 0.7)  # the LR changes
    ours = _train(MomentumSGD(learning_rate=schedule, momentum=0.875))
    keras_own = _train(keras.optimizers.SGD(learning_rate=schedule, momentum=0.875))
    for mine, theirs in zip(ours[0] + ours[1], keras_own[0] + keras_own[1], strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert not np.array_equal(ours[0][0], _variables()[0].numpy())  # it did train


def _update_ops(optimizer) -> list[str]:
    variables = _variables()
    optimizer.build(variables)
    graph = (
        tf.function(lambda grads: optimizer.apply(grads, variables))
        .get_concrete_function(_gradients(0))
        .graph
    )
    return [op.type for op in graph.get_operations()]


def test_each_update_is_one_op_and_the_slots_keep_keras_names():
    ours = _update_ops(MomentumSGD(learning_rate=0.1, momentum=0.9))
    keras_own = _update_ops(keras.optimizers.SGD(learning_rate=0.1, momentum=0.9))
    assert ours.count("ResourceApplyKerasMomentum") == len(SHAPES)
    # Keras adds each variable's momentum to it in an op of its own.
    assert keras_own.count("AssignAddVariableOp") - ours.count("AssignAddVariableOp") == len(SHAPES)
    assert len(ours) < len(keras_own)
    optimizer = MomentumSGD(learning_rate=0.1, momentum=0.9)
    keras_sgd = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    for o in (optimizer, keras_sgd):
        o.build(_variables())

    def slots(o):  # a fresh Keras SGD is named sgd_<n> after the first in a process
        return [v.path.split("/", 1)[1] for v in o.variables]

    assert optimizer.name == "sgd" and slots(optimizer) == slots(keras_sgd)


def test_loss_scaling_and_the_weight_average_wrap_it():
    optimizer = make_optimizer(0.1, momentum=0.875, loss_scaling=True, ema_decay=0.5)
    assert isinstance(optimizer.inner_optimizer, MomentumSGD)
    variables = _variables()
    optimizer.build(variables)
    start = [v.numpy() for v in variables]
    scale = float(optimizer.dynamic_scale.numpy())
    tf.function(lambda grads: optimizer.apply(grads, variables))([g * scale for g in _gradients(0)])
    expected = [s - 0.1 * g.numpy() for s, g in zip(start, _gradients(0), strict=True)]
    for v, e in zip(variables, expected, strict=True):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6)
    averages = optimizer.inner_optimizer._model_variables_moving_average
    np.testing.assert_allclose(averages[0].numpy(), variables[0].numpy())  # first update
