"""Training checkpoints: the model directory plus what it takes to continue exactly.

A checkpoint ``OUT_DIR/checkpoints/step-N`` is a model directory (servable as it is) plus
``trainer_state.pt`` (optimizer, scheduler, grad scaler, RNG states of every rank, loadable
with ``weights_only=True``) and ``trainer.json`` (the position and the options that must not
change). Each is written under a temp name and renamed into place, so a crash leaves the
previous ones intact; only the newest ``--keep`` stay. ``OUT_DIR/final`` is swapped in whole
the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from captioner.errors import AltCapError
from captioner.model.checkpoints import save_pretrained
from captioner.model.modeling import ClipCapModel
from captioner.train.loading import first_line

CHECKPOINTS = "checkpoints"
FINAL = "final"
STATE_NAME = "trainer_state.pt"
META_NAME = "trainer.json"
CKPT_FORMAT = "altcap-train-checkpoint"


class TrainingError(AltCapError):
    """Training cannot start or continue as asked."""

    code = "training_failed"


class OutputExists(TrainingError):
    code = "output_exists"


class ResumeMismatch(TrainingError):
    code = "resume_mismatch"


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain values (loadable weights-only)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": torch.tensor(py_state), "gauss": py_gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Put back what ``rng_state`` took, so dropout and shuffling go on as if never stopped."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint only appears under its final name)."""
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-") and (p / META_NAME).is_file():
            with contextlib.suppress(ValueError):
                found.append((int(p.name.removeprefix("step-")), p))
    return [p for _, p in sorted(found)]


def _replace_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Fill a temp folder beside ``final``, then swap it into place: ``final`` is always
    the old folder or the new one, never half of one, and a failed save leaves no debris.

    A folder cannot be renamed over a non-empty one, so the old ``final`` is first renamed
    aside, the new one renamed in, and only then the old one deleted: a failure between the
    two renames puts the old one back, and a crash there (the process killed) leaves it
    aside, whole, for the next save to restore or remove (``_recover_aside``).
    """
    aside = _aside(final)
    _recover_aside(final, aside)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        write(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run that re-finishes)
            os.replace(final, aside)
        try:
            os.replace(tmp, final)
        except BaseException:
            if aside.exists() and not final.exists():
                os.replace(aside, final)  # the old folder back: never no final at all
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _aside(final: Path) -> Path:
    """Where the old ``final`` waits during a swap (hidden: never taken for a checkpoint)."""
    return final.with_name(f".old-{final.name}")


def _recover_aside(final: Path, aside: Path) -> None:
    """A save killed between its two renames left the old folder aside: put it back if
    ``final`` is missing, else (``final`` is the new one) delete it."""
    if not aside.exists():
        return
    if final.exists():
        shutil.rmtree(aside)
    else:
        os.replace(aside, final)


def save_checkpoint(
    out_dir: Path,
    model: ClipCapModel,
    tokenizer: PreTrainedTokenizerBase,
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``checkpoints/step-N`` through a temp folder renamed into place (a crash leaves
    the previous checkpoints intact), then drop all but the newest ``keep``."""
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        save_pretrained(model, tokenizer, tmp)
        torch.save(state, tmp / STATE_NAME)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1) + "\n")

    final = _replace_dir(root / f"step-{meta['step']:08d}", write)
    for old in checkpoint_dirs(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, state) of a checkpoint; the state is read with ``weights_only=True``."""
    try:
        meta = json.loads((path / META_NAME).read_text())
        if meta.get("format") != CKPT_FORMAT:
            raise ValueError(f"format {meta.get('format')!r}")
        state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign checkpoint: say which and why
        raise TrainingError(f"cannot read the checkpoint {path}: {first_line(e)}") from None
    return meta, state


def save_final(out_dir: Path, model: ClipCapModel, tokenizer: PreTrainedTokenizerBase) -> Path:
    """OUT_DIR/final, swapped in whole: a model directory is either the old one or the new."""
    return _replace_dir(out_dir / FINAL, lambda tmp: save_pretrained(model, tokenizer, tmp))
