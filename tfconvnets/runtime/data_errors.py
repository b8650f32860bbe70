"""A failing op becomes one message: bad input names the records, when they can be found; a
collective that lost a rank says so (never as a data error)."""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from tfconvnets.config import DataConfig
from tfconvnets.data import diagnose_corrupt_records
from tfconvnets.errors import UserError
from tfconvnets.runtime.preemption import TrainingStopped
from tfconvnets.runtime.stall import STALLED_EXIT_CODE

# What a collective raises once a peer is gone. Horovod: its background loop failed (Gloo's
# 30 s receive timeout on a stopped rank, or a rank that exited), measured. TensorFlow's
# collectives: the abort text of its collective executor (not provoked here).
LOST_PEER_TEXTS = ("Horovod has been shut down", "Collective ops is aborted by")


def explain_data_error(error: tf.errors.OpError, data: DataConfig) -> Exception:
    """Only errors raised while reading a batch are diagnosed: the scan decodes every record
    of the dataset, which is hours of work to add to, say, a GPU out-of-memory error."""
    message = error.message.strip().splitlines()[0] if error.message else str(error)
    if is_lost_peer(error):
        return lost_peer(error, who=None)
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


def is_lost_peer(error: tf.errors.OpError) -> bool:
    """Raised by a collective because another rank is gone (stopped, exited or unreachable)."""
    return any(text in (error.message or "") for text in LOST_PEER_TEXTS)


def lost_peer(
    error: tf.errors.OpError, who: list[str] | None, step: int | None = None
) -> Exception:
    """One line for a collective that lost a rank: `who` names the ranks not seen running (None:
    not known here), the job ends with the stall watchdog's exit status."""
    text = (error.message or "").strip()
    cause = next((t for t in LOST_PEER_TEXTS if t in text), text[:120])
    at = f" after step {step}" if step is not None else ""
    named = (
        "; ".join(who)
        if who
        else "not named here (no heartbeat shows a rank stopped or gone: see the others' output)"
    )
    return TrainingStopped(
        f"a collective{at} lost a rank ({cause}): {named}; the job cannot go on",
        exit_code=STALLED_EXIT_CODE,
    )
