"""The pinned stack runs for real: TF + Keras 3, the DALI TF plugin, Horovod with MPI and Gloo."""

import numpy as np
import pytest

from tests.launch import HOROVODRUN, horovodrun, run


def test_imports():
    import horovod.tensorflow as hvd
    import keras
    import nvidia.dali.plugin.tf as dali_tf
    import tensorflow as tf

    assert tf.__version__ == "2.21.0"
    assert keras.__version__.startswith("3.")
    assert hasattr(dali_tf, "DALIDataset")
    assert hvd.gloo_built()
    assert hvd.mpi_built()


def test_horovodrun_check_build_lists_tensorflow_mpi_and_gloo():
    out = run([str(HOROVODRUN), "--check-build"]).stdout
    frameworks, rest = out.split("Available Controllers")
    controllers = rest.split("Available Tensor Operations")[0]
    assert "[X] TensorFlow" in frameworks
    assert "[X] MPI" in controllers
    assert "[X] Gloo" in controllers


@pytest.mark.slow
def test_two_process_xla_step_with_grouped_allreduce_keeps_ranks_identical(tmp_path):
    prefix = tmp_path / "weights"
    horovodrun(2, ["tests/workers/hvd_keras_step.py", str(prefix)], timeout=300)
    ranks = [np.load(f"{prefix}.rank{r}.npz") for r in (0, 1)]
    assert all(int(r["size"]) == 2 for r in ranks)
    num_vars = (len(ranks[0].files) - 1) // 2
    initial = [ranks[0][f"arr_{i}"] for i in range(num_vars)]
    for i in range(num_vars):  # broadcast made the initial weights equal too
        np.testing.assert_array_equal(initial[i], ranks[1][f"arr_{i}"])
    finals = [[r[f"arr_{num_vars + i}"] for i in range(num_vars)] for r in ranks]
    for a, b in zip(*finals, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(initial, finals[0], strict=True))


def test_dali_cpu_pipeline_reads_a_tfrecord_through_dali_dataset(tmp_path):
    import io

    import tensorflow as tf
    from nvidia.dali import fn, pipeline_def, tfrecord, types
    from nvidia.dali.plugin.tf import DALIDataset
    from PIL import Image

    record_path = tmp_path / "train-00000-of-00001"
    labels = [3, 7, 1, 9]
    with tf.io.TFRecordWriter(str(record_path)) as writer:
        for i, label in enumerate(labels):
            buf = io.BytesIO()
            Image.new("RGB", (40, 30), (10 * i, 100, 200)).save(buf, format="JPEG")
            feature = {
                "image/encoded": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[buf.getvalue()])
                ),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
    index_path = tmp_path / "train-00000-of-00001.idx"
    run([str(HOROVODRUN.with_name("tfrecord2idx")), str(record_path), str(index_path)])

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe():
        inputs = fn.readers.tfrecord(
            path=str(record_path),
            index_path=str(index_path),
            features={
                "image/encoded": tfrecord.FixedLenFeature((), tfrecord.string, ""),
                "image/class/label": tfrecord.FixedLenFeature([1], tfrecord.int64, -1),
            },
        )
        images = fn.decoders.image(inputs["image/encoded"], device="cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=16, resize_y=16)
        return images, inputs["image/class/label"]

    with tf.device("/cpu:0"):
        dataset = DALIDataset(
            pipeline=pipe(),
            batch_size=4,
            output_shapes=((4, 16, 16, 3), (4, 1)),
            output_dtypes=(tf.uint8, tf.int64),
            device_id=None,
        )
        images, got_labels = next(iter(dataset))
    assert images.shape == (4, 16, 16, 3) and images.dtype == tf.uint8
    assert got_labels.numpy().ravel().tolist() == labels
    assert images.numpy()[0, 8, 8, 2] > 150  # blue channel of the JPEG came through
