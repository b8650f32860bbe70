"""Top-1 of each exported precision on a trained model: SavedModel (TF), ONNX fp32, fp16, INT8
(ONNX Runtime, CPU), on every validation image, through the project's eval preprocessing.

    make demo DEMO_DIR=/tmp/demo   # or any trained --model_dir with its TFRecords
    python benchmarks/deploy_precision.py --model_dir=/tmp/demo/model \
        --data_dir=/tmp/demo/tfrecords --image_size=32 --num_classes=10

INT8 is calibrated on --calibration_images images of the *train* split (eval preprocessing),
so that the images it is scored on played no part in choosing its ranges.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np

from tfconvnets.benchmarking import (
    add_config_option,
    add_config_options,
    benchmark_parser,
    print_table,
    quiet_tensorflow,
    write_json,
)

FORMATS = ("savedmodel", "onnx", "onnx-fp16", "onnx-int8")


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    add_config_option(parser, "model_dir", required=True, note="the trained model to export")
    add_config_option(parser, "data_dir", required=True, note="its validation split is scored")
    add_config_options(
        parser, arch="resnet50", image_size=32, num_classes=10, calibration_images=256
    )
    add_config_option(parser, "export_dir", note="kept (default: a temporary directory)")
    parser.add_argument("--output_json", default=None)
    return parser


def main() -> int:
    args = build_parser().parse_args()  # a bad option ends before TensorFlow loads
    quiet_tensorflow()
    from tfconvnets import checkpoints
    from tfconvnets.config import DataConfig
    from tfconvnets.deploy.artifacts import export_artifacts
    from tfconvnets.deploy.precision import calibration_images, eval_images
    from tfconvnets.deploy.predictors import load_artifact
    from tfconvnets.models import create_model

    size = args.image_size
    model = create_model(
        args.arch, args.num_classes, input_shape=(size, size, 3), grouped_conv="split"
    )
    path, meta, arrays = checkpoints.latest_valid_checkpoint(args.model_dir)
    checkpoints.check_compatible(
        meta, {"arch": args.arch, "num_classes": args.num_classes}, str(path)
    )
    checkpoints.assign_variables(
        model.variables, meta["model_variables"], arrays, "model", str(path)
    )
    data = DataConfig(
        backend="tf", data_dir=args.data_dir, image_size=size, num_classes=args.num_classes
    )
    calibration = calibration_images(data, args.calibration_images, split="train")
    images, labels = eval_images(data, 1 << 30, split="validation")
    with tempfile.TemporaryDirectory() as scratch:
        export_dir = args.export_dir or scratch
        export_artifacts(
            model, export_dir, FORMATS, image_size=size, xla=False, calibration_images=calibration
        )
        rows = []
        for fmt in FORMATS:
            for dtype in ("float32", "uint8"):
                predictor = load_artifact(export_dir, fmt, input_dtype=dtype)
                batch = np.rint(images).astype(np.uint8) if dtype == "uint8" else images
                classes = np.concatenate(
                    [predictor(batch[i : i + 64])["classes"] for i in range(0, len(batch), 64)]
                )
                rows.append(
                    {
                        "format": fmt,
                        "input": dtype,
                        "top1": float(np.mean(classes == labels)),
                        "correct": int(np.sum(classes == labels)),
                        "images": len(labels),
                    }
                )
    reference = rows[0]["top1"]
    for row in rows:
        row["delta_points"] = 100 * (row["top1"] - reference)
    print_table(
        rows,
        [
            ("format", "format", "<11"),
            ("input", "input", "<8"),
            ("top1", "top-1", ">7.4f"),
            ("correct", "correct", ">7d"),
            ("images", "of", ">5d"),
            ("delta_points", "vs SavedModel (points)", ">22.2f"),
        ],
        title=f"{args.arch} from {path}, {len(labels)} validation images, INT8 calibrated on "
        f"{len(calibration)} train images",
    )
    write_json(args.output_json, args, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
