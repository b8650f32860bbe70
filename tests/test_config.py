"""The configuration, in process: declaration, generated flags, recipes, resolution, validation."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from absl import flags

import tfconvnets.model_configs  # noqa: F401 (registers the recipes)
from tfconvnets.config import (
    FLAG_FIELDS,
    RECIPES,
    LoopConfig,
    RunConfig,
    Section,
    flag_name,
    get_config,
    option,
    resolve_config,
)
from tfconvnets.errors import UserError
from tfconvnets.models import MODEL_SPECS
from tfconvnets.runtime.flags import config_from_flags, define_flags, given_values

# The flag names of version 1 (before the config was generated): none may change or vanish.
VERSION_1_FLAGS = """arch mode data_dir data_idx_dir data_backend dali_device num_threads crop_area_min
random_flip skip_corrupt batch_size num_iter iter_unit lr_init lr_warmup_epochs cosine_lr momentum
weight_decay label_smoothing mixup image_size num_classes zero_init_last_bn dropout xla amp
amp_dtype fp16_allreduce intra_op_threads run_iter warmup_steps eval_every checkpoint_every
keep_checkpoints max_nonfinite_steps model_dir results_dir export_dir finetune_checkpoint
log_filename display_every progress_bar tensorboard seed to_predict inference_batch_sizes""".split()


def parse(*argv: str) -> flags.FlagValues:
    values = flags.FlagValues()
    define_flags(values)
    values(["main.py", *argv])
    return values


def test_every_version_1_flag_is_still_generated():
    assert set(VERSION_1_FLAGS) <= set(FLAG_FIELDS)


def test_each_field_is_declared_once_with_help_and_becomes_one_flag():
    values = parse()
    for top in dataclasses.fields(RunConfig):
        section = top.default_factory() if top.default_factory is not dataclasses.MISSING else None
        if not isinstance(section, Section):
            continue
        for field in dataclasses.fields(section):
            name = flag_name(field)
            assert field.metadata["help"], f"{top.name}.{field.name} has no help text"
            if name is None:  # derived by the runtime
                assert name not in values
                continue
            assert FLAG_FIELDS[name] == (top.name, field.name)
            assert field.metadata["help"] in values[name].help


def test_every_boolean_has_a_no_form():
    hints_by_section = {
        top.name: typing.get_type_hints(top.default_factory)
        for top in dataclasses.fields(RunConfig)
        if top.default_factory is not dataclasses.MISSING
    }
    booleans = [
        name
        for name, (section, field) in FLAG_FIELDS.items()
        if hints_by_section[section][field] in (bool, bool | None)
    ]
    assert {"random_flip", "amp", "xla", "progress_bar", "tensorboard"} <= set(booleans)
    for name in booleans:
        assert given_values(parse(f"--no{name}"))[name] is False
        assert given_values(parse(f"--{name}"))[name] is True


def test_a_new_boolean_needs_one_edit_its_field():
    """A boolean declared in a section becomes a flag with its --no form, and a given value
    reaches that section of the config: nothing else is edited."""

    @dataclasses.dataclass(frozen=True)
    class ExtendedLoop(LoopConfig):
        probe_enabled: bool = option(True, "A probe option.")

    extended = dataclasses.replace(get_config("resnet50"), loop=ExtendedLoop())
    values = flags.FlagValues()
    define_flags(values, defaults=extended)
    values(["main.py", "--noprobe_enabled"])
    assert values["probe_enabled"].help == "A probe option."
    given = given_values(values, defaults=extended)
    assert given == {"probe_enabled": False}
    assert extended.with_values(given).loop.probe_enabled is False


@pytest.mark.parametrize("arch", list(MODEL_SPECS))
def test_recipes_cover_every_arch_with_nvidias_numbers(arch):
    ninety = get_config(arch)
    # 1/16384 for the 101-layer models, 1/32768 for ResNet-50 (and ResNet-26, NVIDIA has none).
    expected_wd = 6.103515625e-05 if "resnext101" in arch else 3.0517578125e-05
    assert ninety.optimization.weight_decay == expected_wd
    assert (ninety.loop.batch_size, ninety.loop.num_iter, ninety.loop.iter_unit) == (
        256,
        90,
        "epoch",
    )
    assert ninety.optimization.lr_init == 0.256 and ninety.optimization.momentum == 0.875
    longer = get_config(arch, "nvidia-250")
    assert (longer.loop.num_iter, longer.optimization.mixup) == (250, 0.2)
    assert longer.optimization.weight_decay == expected_wd


def test_only_flags_given_override_the_recipe():
    config = config_from_flags(parse("--arch=resnext101-32x4d", "--mode=training_benchmark"))
    assert config.optimization.weight_decay == 6.103515625e-05  # the arch's, not the default's
    config = config_from_flags(
        parse("--arch=resnext101-32x4d", "--mode=training_benchmark", "--weight_decay=0.001")
    )
    assert config.optimization.weight_decay == 0.001
    config = config_from_flags(parse("--recipe=nvidia-250", "--mode=training_benchmark"))
    assert config.loop.num_iter == 250 and config.optimization.mixup == 0.2


def test_resolution_fills_what_depends_on_other_values(tmp_path):
    config = resolve_config(mode="training_benchmark")
    assert config.data.backend == "synthetic"  # benchmarks only
    config = resolve_config(
        mode="train", data_dir=str(tmp_path), model_dir=str(tmp_path / "m"), amp=True
    )
    assert config.data.backend == "dali"
    assert config.run.results_dir == str(tmp_path / "m")
    assert config.data.dtype == "float16" and config.compute.dtype_policy == "mixed_float16"
    assert resolve_config(mode="training_benchmark").compute.grouped_conv == "split"
    assert resolve_config(mode="training_benchmark", xla=True).compute.grouped_conv == "native"


def test_the_logged_configuration_is_flat_and_complete():
    flat = resolve_config(mode="training_benchmark").flat()
    assert set(FLAG_FIELDS) | {"recipe"} <= set(flat)
    assert flat["data_backend"] == "synthetic" and flat["recipe"] == "nvidia-90"


def test_list_flags_are_parsed_to_their_element_type():
    given = given_values(parse("--inference_batch_sizes=1,8,64"))
    assert given["inference_batch_sizes"] == (1, 8, 64)
    with pytest.raises(UserError, match="--inference_batch_sizes"):
        given_values(parse("--inference_batch_sizes=1,a"))


BAD = [
    (dict(arch="resnet51"), "--arch: 'resnet51' is not one of"),
    (dict(recipe="fastest"), "--recipe: 'fastest' is not one of nvidia-90, nvidia-250"),
    (dict(mode="fly"), "--mode: 'fly' is not one of"),
    (dict(mode="train"), "--data_dir is required for --mode=train"),
    (dict(mode="train", data_dir="/no/such/dir", model_dir="/tmp/x"), "--data_dir: /no/such/dir"),
    (dict(batch_size=0), "--batch_size: must be positive"),
    (dict(num_iter=-1), "--num_iter: must be positive"),
    (dict(run_iter=0), "--run_iter: must be -1 (all) or positive"),
    (dict(data_backend="foo"), "--data_backend: 'foo' is not one of"),
    (dict(dali_device="tpu"), "--dali_device: 'tpu' is not one of"),
    (dict(amp_dtype="int8"), "--amp_dtype: 'int8' is not one of"),
    (dict(label_smoothing=1.5), "--label_smoothing: must be in [0, 1)"),
    (dict(momentum=1.0), "--momentum: must be in [0, 1)"),
    (dict(mixup=-1.0), "--mixup: must be >= 0"),
    (dict(iter_unit="week"), "--iter_unit: 'week' is not one of epoch, batch"),
    (dict(image_size=8), "--image_size: must be at least 32"),
    (dict(num_classes=1), "--num_classes: must be at least 2"),
    (dict(crop_area_min=0.0), "--crop_area_min: must be in (0, 1]"),
    (dict(dropout=1.0), "--dropout: must be in [0, 1)"),
    (dict(display_every=0), "--display_every: must be positive"),
    (dict(keep_checkpoints=0), "--keep_checkpoints: must be positive"),
    (dict(inference_batch_sizes=(0,)), "--inference_batch_sizes: must be positive"),
    (dict(mode="predict", model_dir="/tmp"), "--to_predict is required for --mode=predict"),
    (dict(mode="predict", model_dir="/tmp", to_predict="/no/file"), "--to_predict: /no/file"),
    (dict(mode="evaluate", data_backend="synthetic"), "--model_dir is required"),
    (dict(finetune_checkpoint="/no/ckpt"), "--finetune_checkpoint: /no/ckpt is not a directory"),
    (dict(no_such_option=1), "unknown option(s): --no_such_option"),
    (dict(fp16_allreduce=True), "--fp16_allreduce: needs --amp --amp_dtype=float16"),
    (
        dict(fp16_allreduce=True, amp=True, amp_dtype="bfloat16"),
        "--fp16_allreduce: needs --amp --amp_dtype=float16",
    ),
]


@pytest.mark.parametrize("values, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_values_get_one_line_naming_the_flag(values, message):
    values = {"mode": "training_benchmark", **values}
    with pytest.raises(UserError) as raised:
        resolve_config(values)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_config_built_in_code_is_held_to_the_same_rules():
    config = get_config("resnet50")
    bad = dataclasses.replace(config, data=config.data.replace(num_threads=0))
    with pytest.raises(UserError, match="--num_threads: must be positive"):
        bad.validate()


def test_recipes_registry_names():
    assert list(RECIPES) == ["nvidia-90", "nvidia-250", "fast"]
