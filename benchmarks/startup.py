"""Process start-up: TensorFlow loaded as every entry point loads it
(`tfconvnets.console.import_tensorflow`, which keeps Keras from importing matplotlib's pyplot)
against a plain `import tensorflow`, each in a fresh interpreter, alternating; CPU seconds.

Every rank of every run, and horovodrun's own Gloo check, pays this before its first step.

    python benchmarks/startup.py --rounds=5 --output_json=results/startup.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from tfconvnets.benchmarking import benchmark_parser, print_table, write_json

# Both import tfconvnets first (its environment: oneDNN on, TensorFlow's C++ log quiet).
CASES = {
    "import tensorflow": "import tensorflow",
    "import_tensorflow()": "from tfconvnets.console import import_tensorflow; import_tensorflow()",
}
CHILD = """
import resource, sys
import tfconvnets
{load}
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_utime + usage.ru_stime, "matplotlib" in sys.modules)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per case")
    parser.add_argument("--output_json")
    return parser


def cpu_seconds(load: str) -> tuple[float, bool]:
    """CPU seconds of a fresh interpreter that loads TensorFlow by `load`, and whether
    matplotlib was imported."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(load=load)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds, matplotlib = proc.stdout.split()
    return float(seconds), matplotlib == "True"


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cpu_seconds(CASES["import tensorflow"])  # warms the page cache: the first load reads 1 GB
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    matplotlib: dict[str, bool] = {}
    for round_index in range(args.rounds):
        order = list(CASES) if round_index % 2 == 0 else list(reversed(CASES))
        for name in order:
            seconds, matplotlib[name] = cpu_seconds(CASES[name])
            samples[name].append(seconds)
    reference = statistics.median(samples["import tensorflow"])
    rows = [
        {
            "case": name,
            "cpu_s": statistics.median(values),
            "min_s": min(values),
            "max_s": max(values),
            "ratio": statistics.median(values) / reference,
            "matplotlib": "imported" if matplotlib[name] else "not imported",
        }
        for name, values in samples.items()
    ]
    print_table(
        rows,
        [
            ("case", "loads TensorFlow by", "<22"),
            ("cpu_s", "CPU s (median)", ".2f"),
            ("min_s", "min", ".2f"),
            ("max_s", "max", ".2f"),
            ("ratio", "vs plain", ".2f"),
            ("matplotlib", "matplotlib", "<12"),
        ],
        title=f"TensorFlow's import in a fresh process, {args.rounds} alternated rounds",
    )
    write_json(args.output_json, args, rows, samples=samples)


if __name__ == "__main__":
    main()
