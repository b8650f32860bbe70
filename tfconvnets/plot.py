"""A picture of a run from its DLLogger log: training loss, learning rate and eval top-1.

python -m tfconvnets.plot LOG.json [--output=PLOT.png]
"""

from __future__ import annotations

import os

from absl import app, flags

from tfconvnets.dllogger import read_log


def plot_log(log_path: str, output_path: str | None = None) -> str:
    """Writes a PNG next to the log (or to `output_path`) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train_steps, losses, cross_entropies, lrs, eval_steps, top1 = [], [], [], [], [], []
    for record in read_log(log_path):
        step, data = record.get("step"), record.get("data", {})
        if not isinstance(step, list) or len(step) < 2:
            continue
        if len(step) == 3 and step[2] == "eval" and "top1_accuracy" in data:
            eval_steps.append(step[1])
            top1.append(data["top1_accuracy"])
        elif "total_loss" in data:
            train_steps.append(step[1])
            losses.append(data["total_loss"])
            cross_entropies.append(data.get("cross_entropy"))
            lrs.append(data.get("learning_rate"))
    if not train_steps and not eval_steps:
        raise ValueError(f"{log_path} holds no training or evaluation records")

    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    axes[0].plot(train_steps, losses, color="tab:blue", label="total (with L2)")
    if None not in cross_entropies:
        axes[0].plot(train_steps, cross_entropies, color="tab:purple", label="cross-entropy")
        axes[0].legend()
    axes[0].set_ylabel("training loss")
    axes[1].plot(train_steps, lrs, color="tab:orange")
    axes[1].set_ylabel("learning rate")
    axes[2].plot(eval_steps, top1, "o-", color="tab:green")
    axes[2].set_ylabel("eval top-1")
    axes[2].set_ylim(0, 1)
    axes[2].set_xlabel("step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"tfconvnets run: {os.path.abspath(log_path)}", fontsize=9)
    fig.tight_layout()
    output_path = output_path or os.path.splitext(log_path)[0] + ".png"
    fig.savefig(output_path, dpi=100)
    plt.close(fig)
    return output_path


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: python -m tfconvnets.plot LOG.json [--output=PLOT.png]")
    print(plot_log(argv[1], flags.FLAGS.output))


if __name__ == "__main__":
    flags.DEFINE_string("output", None, "PNG path (default: the log's path with .png).")
    app.run(main)
