"""Every command line with which NVIDIA's TF1 ConvNets launch scripts start `main.py`: the
data is `nvidia_scripts.json` beside this loader.

Source: NVIDIA DeepLearningExamples (https://github.com/NVIDIA/DeepLearningExamples),
directory `TensorFlow/Classification/ConvNets`, read at commit
729963dd47e7c8bd462ad10bfac7a7b0b604e6dd (2024-04-04) and at every earlier commit that changed a script under `resnet50v1.5/`, `resnext101-32x4d/` or
`se-resnext101-32x4d/`, back to `fed7ba99cde9` (2020-06-12, when the directory was created).
This covers `training/*.sh`, the 2020 `training/{AMP,FP16,FP32,QAT}/*.sh` and `GENERIC.sh`,
`inference_benchmark.sh` and `training/training_perf.sh`. Each distinct version of a script
is one or more entries. Users copied these scripts at different times, and the flag
spellings changed twice (see docs/nvidia_flags.md, section 0).

The facts were collected by running each version of each script with stand-ins for
`python`, `python3`, `mpiexec` and `nvidia-smi` that record their arguments. So the lists
are what the shell really passed, after its own expansion, in order. This is data, not
their script text.

Placeholders in `argv` (fill them with `str.format`):
  {workspace}    the script's WORKSPACE argument (results go to `{workspace}/results`;
                  the 2020 ResNeXt/SE-ResNeXt GENERIC.sh uses `{workspace}` itself)
  {data_dir}     the script's DATA_DIR argument. For training scripts this is the
                  parent of `tfrecords/` and `dali_idx/`. For inference_benchmark.sh it is
                  the TFRecord directory itself. For the QAT script it is `$2`.
  {data_idx_dir} inference_benchmark.sh's second argument (the DALI index directory; the
                  DALI configuration runs only when it is given)
  {results_dir}  the QAT script's `$3`, or the 2020 ResNeXt wrappers' RESULT_DIR (`$1`)
  {finetune_checkpoint}  the QAT script's `$1`
  {max_fp32_bs}, {max_amp_bs}  training_perf.sh's `$1` and `$2` (defaults in
                  `placeholders`)
  {batch_size}   inference_benchmark.sh's loop variable; the values are in
                  `params["batch_size"]`
  {gpu_count}    (in `launcher` only) the number of GPUs `nvidia-smi` lists

Fields of each entry:
  script             path in their repository
  first_commit, first_commit_date   the first commit (in `git log` order) with this
                     version of the script; several entries share it when one script
                     runs several command lines
  at_head            whether this version is the one at `729963dd47e7`
  label              the script's own name for the configuration (inference_benchmark:
                     its `test_configuration` label; training_perf: the `BS=…,amp|fp32,XLA=0|1`
                     prefix it writes), else None
  launcher           the command before the interpreter (`mpiexec …`), or None for a
                     plain `python`
  env_options        optional: environment variables that change the line.
                     `BIND_TO_SOCKET` (non-empty) makes the launcher the one given.
                     `USE_DALI`/`USE_XLA` (2020 GENERIC.sh) insert `adds` after the
                     argument `after`.
  interpreter        `python` or `python3`
  argv               the arguments after `main.py` (or `./main.py`), in order
  extra_args         True when the script appends its remaining arguments (`${OTHER}`,
                     `${@:3}`, `${@:7}`) after argv. Their README's example passes
                     `--xla --dali` that way.
  params             loop values to expand into separate runs (inference batch sizes)
  placeholders       where each placeholder comes from, and its default
  positional         (GENERIC.sh only) its positional parameters
  via                "GENERIC.sh" when the script delegates to it
  output_parsing     how the script parses the run's stdout (benchmark scripts)

Notable facts (details in docs/nvidia_flags.md):
  - `--muxup=0.2` is a typo, and not only in resnet50v1.5/training/DGX1_RN50_AMP_250E.sh:
    all twelve flat `DGX*_250E.sh` scripts (three models) carry it from 4eaa4434
    (2020-06-27) to 33110132 (2021-07-13). NVIDIA's own parser rejected it (unknown
    argument), so those scripts did not start in that period.
  - `--use_cosine` (2020 scripts) is not one of the flags NVIDIA's 2020 parser defined. It
    worked as an argparse abbreviation of `--use_cosine_lr`.
  - se-resnext101-32x4d/training/training_perf.sh tests `$G3` instead of `$3`, so even its
    one-GPU runs go through `mpiexec ... -np 1`.
  - DGX2_SE-RNxt101-32x4d_AMP_250E.sh passes `--arch=resnext101-32x4d`.
"""

from __future__ import annotations

import json
from pathlib import Path

_DATA = json.loads((Path(__file__).with_suffix(".json")).read_text())

SOURCE_REPOSITORY: str = _DATA["source_repository"]
SOURCE_DIRECTORY: str = _DATA["source_directory"]
SOURCE_COMMIT: str = _DATA["source_commit"]
COMMANDS: list[dict] = _DATA["commands"]
