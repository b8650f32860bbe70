"""A few data-parallel steps of a small Keras 3 model under horovodrun.

XLA computes loss and gradients; `hvd.grouped_allreduce` averages them outside the XLA
function; a Keras optimizer applies them. Each rank saves its initial and final weights.
"""

import sys

import horovod.tensorflow as hvd
import keras
import numpy as np
import tensorflow as tf

out_prefix = sys.argv[1]
hvd.init()
keras.utils.set_random_seed(1234 + hvd.rank())  # different init per rank: broadcast must fix it

model = keras.Sequential(
    [
        keras.Input((8, 8, 4)),
        keras.layers.Conv2D(8, 3, groups=2, use_bias=False),  # grouped: CPU needs XLA
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ]
)
optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
optimizer.build(model.trainable_variables)
hvd.broadcast_variables([v.value for v in model.variables], root_rank=0)
initial = [v.numpy().copy() for v in model.trainable_variables]
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@tf.function(jit_compile=True)
def loss_and_grads(images, labels):
    with tf.GradientTape() as tape:
        loss = loss_fn(labels, model(images, training=True))
    return loss, tape.gradient(loss, model.trainable_variables)


rng = np.random.default_rng(hvd.rank())  # each rank sees different data
for _ in range(3):
    images = tf.constant(rng.normal(size=(4, 8, 8, 4)), tf.float32)
    labels = tf.constant(rng.integers(0, 3, size=4), tf.int32)
    loss, grads = loss_and_grads(images, labels)
    grads = hvd.grouped_allreduce(grads, op=hvd.Average)
    optimizer.apply(grads, model.trainable_variables)

final = [v.numpy() for v in model.trainable_variables]
np.savez(f"{out_prefix}.rank{hvd.rank()}.npz", *initial, *final, size=hvd.size())
