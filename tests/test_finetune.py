"""Fine-tuning from a checkpoint: `--finetune_checkpoint` and tfconvnets.finetune.load_pretrained."""

from __future__ import annotations

import logging
import sys

import keras
import numpy as np
import pytest

from tests.launch import run
from tests.test_convert import checkpoint_arrays, hwio, write_synthetic_state_dict
from tfconvnets import checkpoints
from tfconvnets.errors import UserError
from tfconvnets.finetune import load_pretrained


def tiny_model(
    num_classes: int = 4, name: str = "resnet50", seed: int = 0, dropout: float = 0.0
) -> keras.Model:
    """A stand-in with the real models' layer names where it matters (fast to build)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(
        5, 3, name="stem_conv", kernel_initializer=keras.initializers.RandomNormal(seed=seed)
    )(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if dropout:  # like create_model(dropout=...): adds a random-number state variable
        x = keras.layers.Dropout(dropout, seed=seed)(x)
    outputs = keras.layers.Dense(
        num_classes,
        name="classifier",
        kernel_initializer=keras.initializers.RandomNormal(seed=seed + 1),
    )(x)
    return keras.Model(inputs, outputs, name=name)


def save(directory, step: int, model: keras.Model, **metadata):
    meta = {"arch": model.name, "num_classes": model.outputs[0].shape[-1], **metadata}
    return checkpoints.write_checkpoint(directory, step, model.variables, [], meta)


def weights(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: v.numpy() for v in model.variables}


def assert_same(a: dict, b: dict, paths) -> None:
    for path in paths:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def test_accepts_a_checkpoint_or_a_directory_holding_them(tmp_path):
    older, newer = tiny_model(seed=1), tiny_model(seed=2)
    older_path = save(tmp_path, 1, older)
    newer_path = save(tmp_path, 5, newer)

    model = tiny_model(seed=3)
    assert load_pretrained(model, tmp_path) == newer_path  # the newest of the directory
    assert_same(weights(model), weights(newer), weights(newer))
    assert load_pretrained(model, older_path) == older_path  # exactly the one named
    assert_same(weights(model), weights(older), weights(older))


def test_a_corrupt_newest_checkpoint_is_skipped_but_not_when_named(tmp_path):
    good = tiny_model(seed=1)
    save(tmp_path, 1, good)
    corrupt = save(tmp_path, 2, tiny_model(seed=2))
    arrays = corrupt / checkpoints.ARRAYS_FILE
    arrays.write_bytes(arrays.read_bytes()[:100])  # truncated

    model = tiny_model(seed=3)
    assert load_pretrained(model, tmp_path).name == "ckpt-000000001"
    assert_same(weights(model), weights(good), weights(good))
    with pytest.raises(UserError, match="--finetune_checkpoint: .*checksum mismatch"):
        load_pretrained(model, corrupt)


def test_a_directory_without_checkpoints_is_an_error(tmp_path):
    with pytest.raises(UserError, match="neither a checkpoint .* nor a directory holding ckpt-"):
        load_pretrained(tiny_model(), tmp_path)
    corrupt = save(tmp_path, 3, tiny_model())
    (corrupt / checkpoints.ARRAYS_FILE).write_bytes(b"")
    with pytest.raises(UserError, match="every ckpt-\\* checkpoint in it is corrupt"):
        load_pretrained(tiny_model(), tmp_path)


def test_other_num_classes_reinitializes_only_the_classifier(tmp_path, caplog):
    source = tiny_model(num_classes=1000, seed=1)
    save(tmp_path, 0, source)
    model = tiny_model(num_classes=10, seed=2)
    fresh = weights(model)

    with caplog.at_level(logging.WARNING):
        load_pretrained(model, tmp_path)
    loaded = weights(model)
    backbone = [p for p in loaded if not p.startswith("classifier/")]
    assert len(backbone) == 6  # conv kernel and bias, BN's four
    assert_same(loaded, weights(source), backbone)
    assert_same(loaded, fresh, ["classifier/kernel", "classifier/bias"])
    assert "the classifier is re-initialized" in caplog.text
    assert "classifier/kernel (5, 1000) -> (5, 10)" in caplog.text


def test_dropout_state_is_no_weight(tmp_path):
    without, with_dropout = tiny_model(seed=1), tiny_model(seed=2, dropout=0.5)
    assert len(with_dropout.variables) == len(without.variables) + 1
    save(tmp_path / "plain", 0, without)
    save(tmp_path / "dropout", 0, with_dropout)
    saved_with_dropout = weights(with_dropout)

    model = tiny_model(seed=3)
    load_pretrained(model, tmp_path / "dropout")
    assert_same(weights(model), saved_with_dropout, weights(model))
    load_pretrained(with_dropout, tmp_path / "plain")
    assert_same(weights(with_dropout), weights(without), weights(without))


def test_another_arch_or_layout_is_refused_and_nothing_is_assigned(tmp_path):
    save(tmp_path / "se", 0, tiny_model(name="se-resnext101-32x4d"))
    with pytest.raises(
        UserError, match="holds se-resnext101-32x4d weights, this run trains resnet50"
    ):
        load_pretrained(tiny_model(), tmp_path / "se")

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(5, 3, name="other_conv")(inputs)
    outputs = keras.layers.Dense(4, name="classifier")(keras.layers.GlobalAveragePooling2D()(x))
    save(tmp_path / "other", 0, keras.Model(inputs, outputs, name="resnet50"))
    model = tiny_model(seed=4)
    before = weights(model)
    with pytest.raises(UserError, match=r"does not match the model: missing \['stem_conv/kernel'"):
        load_pretrained(model, tmp_path / "other")
    assert_same(weights(model), before, before)


@pytest.mark.subprocess
def test_training_starts_from_converted_weights(tmp_path):
    """main.py fine-tunes a converted 1000-class ResNet-50 on 10 classes.

    With a zero learning rate the backbone's kernels must come out of training exactly as
    PyTorch's tensors, transposed; BN moving statistics move in training and are not checked.
    """
    src = tmp_path / "resnet50.safetensors"
    state_dict = write_synthetic_state_dict(src, "resnet50", num_classes=1000)
    converted = tmp_path / "converted"
    run([
        sys.executable, "-m", "tfconvnets.convert", "--arch=resnet50", f"--src={src}",
        "--format=torchvision", f"--out={converted}",
    ])  # fmt: skip
    model_dir = tmp_path / "model"
    result = run([
        sys.executable, "main.py", "--mode=train", "--arch=resnet50",
        f"--finetune_checkpoint={converted}", "--num_classes=10", "--image_size=32",
        "--batch_size=4", "--data_backend=synthetic", f"--model_dir={model_dir}",
        "--num_iter=2", "--iter_unit=batch", "--lr_init=0", "--noprogress_bar",
    ])  # fmt: skip
    assert "the classifier is re-initialized" in result.stderr
    assert f"initialized the model from {converted / 'ckpt-000000000'}" in result.stderr

    final = checkpoints.latest_valid_checkpoint(model_dir)[0]
    meta, trained = checkpoint_arrays(final)
    assert meta["step"] == 2 and meta["num_classes"] == 10
    assert trained["classifier/kernel"].shape == (2048, 10)
    for keras_path, torch_key in {
        "stem_conv/kernel": "conv1.weight",
        "stage2_block1_conv2/kernel": "layer2.0.conv2.weight",
        "stage4_block3_conv3/kernel": "layer4.2.conv3.weight",
        "stage3_block1_shortcut_conv/kernel": "layer3.0.downsample.0.weight",
    }.items():
        np.testing.assert_array_equal(trained[keras_path], hwio(state_dict[torch_key]))
    np.testing.assert_array_equal(
        trained["stage1_block1_bn2/gamma"], state_dict["layer1.0.bn2.weight"]
    )
