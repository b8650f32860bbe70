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

from tfconvnets.benchmarking import print_table, quiet_tensorflow, write_json

FORMATS = ("savedmodel", "onnx", "onnx-fp16", "onnx-int8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--calibration_images", type=int, default=256)
    parser.add_argument("--export_dir", default=None, help="keep the artifacts here")
    parser.add_argument("--output_json", default=None)
    return parser.parse_args()


def main() -> int:
    quiet_tensorflow()
    args = parse_args()
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
