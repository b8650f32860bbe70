"""A failing input op becomes one message naming the bad records, when they can be found."""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from tfconvnets.data import DataConfig, diagnose_corrupt_records
from tfconvnets.errors import UserError


def explain_data_error(error: tf.errors.OpError, data: DataConfig) -> Exception:
    """Only errors raised while reading a batch are diagnosed: the scan decodes every record
    of the dataset, which is hours of work to add to, say, a GPU out-of-memory error."""
    message = error.message.strip().splitlines()[0] if error.message else str(error)
    if "tfconvnets:" in message:  # the pipelines' own in-graph checks carry a readable message
        return UserError(message[message.index("tfconvnets:") + len("tfconvnets:") :].strip())
    if data.data_dir and data.backend != "synthetic" and is_input_error(error):
        logging.error(
            "reading the input failed (%s: %s); decoding every record of %s to name the bad "
            "ones (interrupt to skip)",
            type(error).__name__, message[:300], data.data_dir,
        )  # fmt: skip
        bad = [
            r
            for split in ("train", "validation")
            for r in diagnose_corrupt_records(
                data.data_dir, split, data.num_classes, data.data_layout
            )
        ]
        if bad:
            shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
            return UserError(
                f"undecodable records in {data.data_dir}: {shown} "
                "(re-create them, or pass --skip_corrupt with --data_backend=tf)"
            )
    return error


def is_input_error(error: tf.errors.OpError) -> bool:
    """Raised by reading a batch (tf.data or DALI), and not for lack of memory."""
    text = error.message or ""
    out_of_memory = isinstance(error, tf.errors.ResourceExhaustedError) or any(
        hint in text.lower() for hint in ("out of memory", "failed to allocate")
    )
    return not out_of_memory and ("IteratorGetNext" in text or "DALI" in text)
