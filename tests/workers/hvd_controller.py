"""Says which Horovod controller runs this rank (MPI or Gloo) and sums a tensor across ranks."""

import horovod.tensorflow as hvd
import tensorflow as tf

hvd.init()
controller = "mpi" if hvd.mpi_enabled() else "gloo" if hvd.gloo_enabled() else "none"
total = hvd.allreduce(tf.constant(float(hvd.rank() + 1)), op=hvd.Sum)
print(
    f"rank {hvd.rank()} of {hvd.size()}: controller {controller}, allreduce sum {float(total)}",
    flush=True,
)
