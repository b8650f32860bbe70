"""NVIDIA TF1 ConvNets' flag spellings, one declarative table.

NVIDIA DeepLearningExamples' `TensorFlow/Classification/ConvNets` scripts spelled some flags
differently from ours, in three eras (docs/nvidia_flags.md, section 0). Each spelling here has
one action:

- `alias`: another name of one of our flags, with a value mapping;
- `refuse`: one line saying what to use instead;
- `ignore`: accepted only where honouring it changes nothing, with one line saying so.

Flags NVIDIA spelled as we do (`--arch`, `--amp`, `--xla`, `--cosine_lr`, `--static_loss_scale`,
`--weight_init`, `--cpu` ...) are ours and are not listed. The absl flags of this table are
generated from it (`define_flags`; `--helpfull` lists them under this module), and
`translate` turns the spellings given into our flags' values for `tfconvnets.runtime.flags`: one behaviour
is never reachable under two names with two meanings, so both spellings given with different
values is an error. The run logs what each spelling became (`NVIDIA flags: ...`) and writes the
same list into the DLLogger PARAMETER record as `nvidia_flags`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from absl import flags

from tfconvnets.errors import UserError

MODULE = "tfconvnets.config.nvidia_compat (NVIDIA TF1 ConvNets spellings)"
DEFAULT_STATIC_LOSS_SCALE = 256.0  # NVIDIA's 2020 default of --loss_scale

ALIAS, REFUSE, IGNORE = "alias", "refuse", "ignore"

INT8_INSTEAD = (
    "quantization-aware training used tf.contrib.quantize, which TF 2 does not have; "
    "for INT8 use the ONNX export (--export_format=onnx-int8)"
)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one given spelling became: our flags' values, and the line that says so."""

    action: str
    values: Mapping[str, Any]
    line: str


# The resolver of a spelling: (its value, every other value given, by our flag names) -> Outcome.
Resolver = Callable[[Any, Mapping[str, Any]], Outcome]


@dataclasses.dataclass(frozen=True)
class Spelling:
    name: str
    kind: type
    actions: tuple[str, ...]  # what it can become (documentation; `resolve` decides)
    help: str
    resolve: Resolver
    choices: tuple[str, ...] | None = None


def _show(name: str, value: Any) -> str:
    return (
        f"--{name}" if value is True else f"--no{name}" if value is False else f"--{name}={value}"
    )


def _alias(name: str, target: str, convert: Callable[[Any], Any] = lambda v: v) -> Resolver:
    def resolve(value, given):
        mapped = convert(value)
        return Outcome(ALIAS, {target: mapped}, f"{_show(name, value)} -> {_show(target, mapped)}")

    return resolve


def _refuse(name: str, why: str, *, off_value: Any = False) -> Resolver:
    """Refused unless given its "off" value (e.g. --noquantize), which changes nothing."""

    def resolve(value, given):
        if value == off_value:
            return Outcome(IGNORE, {}, f"{_show(name, value)} ignored (it is off, as here)")
        raise UserError(f"{_show(name, value)}: {why}")

    return resolve


def _ignore(name: str, why: str) -> Resolver:
    def resolve(value, given):
        return Outcome(IGNORE, {}, f"{_show(name, value)} ignored ({why})")

    return resolve


def _precision(value, given):
    if value == "fp32":
        return Outcome(IGNORE, {}, "--precision=fp32 ignored (float32 unless --amp, as here)")
    return Outcome(
        ALIAS,
        {"amp": True},
        "--precision=fp16 -> --amp (mixed precision: pure fp16 training is not offered)",
    )


def _synthetic_data_size(value, given):
    if given.get("data_dir"):
        return Outcome(
            IGNORE,
            {},
            f"--synthetic_data_size={value} ignored (it sizes synthetic data only, and "
            "--data_dir is given; use --image_size)",
        )
    return Outcome(
        ALIAS, {"image_size": value}, f"--synthetic_data_size={value} -> --image_size={value}"
    )


def _use_static_loss_scaling(value, given):
    if "static_loss_scale" in given:
        return Outcome(
            IGNORE,
            {},
            f"{_show('use_static_loss_scaling', value)} ignored (the scale given decides)",
        )
    if not value:
        return Outcome(IGNORE, {}, "--nouse_static_loss_scaling ignored (dynamic is the default)")
    scale = DEFAULT_STATIC_LOSS_SCALE
    return Outcome(
        ALIAS,
        {"static_loss_scale": scale},
        f"--use_static_loss_scaling -> --static_loss_scale={scale:g} (NVIDIA's 2020 default "
        "scale, as no scale was given)",
    )


def _data_format(value, given):
    if value == "NHWC":
        return Outcome(IGNORE, {}, "--data_format=NHWC ignored (inputs are NHWC here too)")
    raise UserError(
        "--data_format=NCHW: inputs are NHWC here; the compute layout is chosen by cuDNN/XLA "
        "(drop the flag)"
    )


def _quant_delay(value, given):
    if value == 0:
        return Outcome(IGNORE, {}, "--quant_delay=0 ignored (no quantization)")
    raise UserError(f"--quant_delay={value}: {INT8_INSTEAD}")


def _backend(value: bool) -> str:
    return "dali" if value else "tf"


SPELLINGS: tuple[Spelling, ...] = (
    Spelling("use_tf_amp", bool, (ALIAS,), "NVIDIA's --amp (2020).", _alias("use_tf_amp", "amp")),
    Spelling("use_xla", bool, (ALIAS,), "NVIDIA's --xla (2020).", _alias("use_xla", "xla")),
    Spelling(
        "dali",
        bool,
        (ALIAS,),
        "NVIDIA's DALI switch: --data_backend=dali (--nodali: tf).",
        _alias("dali", "data_backend", _backend),
    ),  # fmt: skip
    Spelling(
        "use_dali",
        bool,
        (ALIAS,),
        "NVIDIA's DALI switch (2020): --data_backend=dali/tf.",
        _alias("use_dali", "data_backend", _backend),
    ),  # fmt: skip
    *(
        Spelling(name, bool, (ALIAS,), "NVIDIA's --cosine_lr.", _alias(name, "cosine_lr"))
        for name in ("use_cosine", "use_cosine_lr", "cosine")
    ),
    Spelling(
        "synthetic_data_size",
        int,
        (ALIAS, IGNORE),
        "NVIDIA's size of synthetic images: --image_size without --data_dir (ignored with it).",
        _synthetic_data_size,
    ),  # fmt: skip
    Spelling(
        "precision",
        str,
        (ALIAS, IGNORE),
        "NVIDIA's 2020 precision: fp32 is ignored (the default), fp16 is --amp.",
        _precision,
        choices=("fp32", "fp16"),
    ),  # fmt: skip
    Spelling(
        "loss_scale",
        float,
        (ALIAS,),
        "NVIDIA's --static_loss_scale (2020).",
        _alias("loss_scale", "static_loss_scale"),
    ),  # fmt: skip
    Spelling(
        "use_static_loss_scaling",
        bool,
        (ALIAS, IGNORE),
        "NVIDIA's 2020 static loss scaling switch: alone, --static_loss_scale=256; with a "
        "scale, the scale decides.",
        _use_static_loss_scaling,
    ),  # fmt: skip
    Spelling(
        "muxup",
        str,
        (REFUSE,),
        "A typo in NVIDIA's 2020-21 250-epoch scripts: refused.",
        _refuse(
            "muxup",
            "a typo in NVIDIA's 250-epoch scripts (2020-06..2021-07) for --mixup, which their own "
            "parser rejected too; use --mixup=0.2",
            off_value=None,
        ),
    ),  # fmt: skip
    *(
        Spelling(
            name,
            bool,
            (REFUSE,),
            "NVIDIA's TF1 quantization: refused.",
            _refuse(name, INT8_INSTEAD),
        )
        for name in ("quantize", "symmetric", "use_qdq")
    ),
    Spelling(
        "quant_delay",
        int,
        (REFUSE, IGNORE),
        "NVIDIA's TF1 quantization delay: refused unless 0.",
        _quant_delay,
    ),  # fmt: skip
    Spelling(
        "use_final_conv",
        bool,
        (REFUSE,),
        "NVIDIA's 1x1-conv classifier for TF1 TensorRT: refused.",
        _refuse(
            "use_final_conv",
            "it only served TensorRT parsing of TF1 graphs; export a SavedModel (--export_dir) or "
            "ONNX (--export_format=onnx) instead",
        ),
    ),  # fmt: skip
    Spelling(
        "data_format",
        str,
        (IGNORE, REFUSE),
        "NVIDIA's compute layout: NHWC accepted, NCHW refused.",
        _data_format,
        choices=("NHWC", "NCHW"),
    ),  # fmt: skip
    Spelling(
        "gpu_memory_fraction",
        float,
        (IGNORE,),
        "NVIDIA's GPU memory share for TF: ignored.",
        _ignore(
            "gpu_memory_fraction",
            "TF memory growth is on, so the room NVIDIA reserved for DALI is there anyway",
        ),
    ),  # fmt: skip
    Spelling(
        "gpu_id",
        int,
        (ALIAS,),
        "NVIDIA's CUDA ordinal of a single-process run: --gpu (several processes: ignored).",
        _alias("gpu_id", "gpu"),
    ),  # fmt: skip
)
BY_NAME: Mapping[str, Spelling] = {s.name: s for s in SPELLINGS}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """One absl flag per spelling, listed by --helpfull under their own module."""
    for s in SPELLINGS:
        args = dict(flag_values=flag_values, module_name=MODULE)
        help_text = f"{s.help} [{'/'.join(s.actions)}]"
        if s.kind is bool:
            flags.DEFINE_boolean(s.name, None, help_text, **args)
        elif s.choices:
            flags.DEFINE_enum(s.name, None, list(s.choices), help_text, **args)
        elif s.kind is int:
            flags.DEFINE_integer(s.name, None, help_text, **args)
        elif s.kind is float:
            flags.DEFINE_float(s.name, None, help_text, **args)
        else:
            flags.DEFINE_string(s.name, None, help_text, **args)


def given_spellings(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """The spellings of this table given on the command line, in the table's order."""
    return {
        s.name: flag_values[s.name].value
        for s in SPELLINGS
        if s.name in flag_values and flag_values[s.name].present
    }


def translate(
    spellings: Mapping[str, Any], given: Mapping[str, Any]
) -> tuple[dict[str, Any], list[Outcome]]:
    """Our flags' values for the NVIDIA `spellings` given, and what each became.

    `given` holds our own flags given (by name). A spelling that sets one of them to another
    value than the one given, or two spellings that disagree, is a one-line error.
    """
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    outcomes = []
    for name, value in spellings.items():
        outcome = BY_NAME[name].resolve(value, {**given, **values})
        for target, mapped in outcome.values.items():
            shown = _show(name, value)
            if target in given and given[target] != mapped:
                raise UserError(
                    f"{shown} means {_show(target, mapped)}, but {_show(target, given[target])} "
                    "is also given: give one of them"
                )
            if target in values and values[target] != mapped:
                raise UserError(
                    f"{shown} means {_show(target, mapped)}, but {source[target]} means "
                    f"{_show(target, values[target])}: give one of them"
                )
            values[target] = mapped
            source[target] = shown
        outcomes.append(outcome)
    return values, outcomes
