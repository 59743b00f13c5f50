"""``train``'s options: one dataclass whose fields carry their default, flag and help.

``TrainOptions`` is the one place a training option is declared. The ``train`` parser, its
``--help`` and the docs' option table (docs/training.md) are built from its fields, so a
default shown to the user is the default the run uses (a test holds the docs' table to
``options_table()``).

Model options left blank take the ``--init`` model's value, else the paper's; a field says
which with ``paper=``, and ``parts.architecture`` reads the same value from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, get_args

from captioner.errors import InvalidSettings
from captioner.lang import is_language_tag
from captioner.train.collapse import RECIPE_LR

DEFAULT_SHARD_SIZE = 4096  # images per shard file of an embedding store (`embed`)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAPPINGS = ("mlp", "transformer")

# argparse group of each field, in the order `--help` shows them
GROUPS = {
    "data": "",
    "parts": "where the model's parts come from",
    "model": "model (a blank option takes --init's value, else the paper's)",
    "optimisation": "optimisation (defaults: the paper's COCO run)",
    "running": "running (may change on --resume)",
}


def _opt(
    default: Any,
    help: str,
    group: str,
    *,
    paper: Any = None,
    shown: str | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
):
    """A TrainOptions field that documents itself.

    ``paper``: for a model option left blank (``None``), the value taken when no ``--init``
    model gives one. ``shown``: the default as help writes it, where ``str(default)`` would
    not say it."""
    meta = {"help": help, "group": group, "paper": paper, "shown": shown}
    meta.update(choices=choices, metavar=metavar)
    return field(default=default, metadata=meta)


def _positional(help: str, metavar: str):
    return field(metadata={"help": help, "group": "data", "metavar": metavar, "paper": None})


@dataclass
class TrainOptions:
    """Everything a run depends on; ``None`` means "the init model's value, else the paper's"."""

    embeddings: str = _positional("embedding store (from `embed`)", "EMBEDDINGS")
    out_dir: str = _positional("output: final/, checkpoints/, log.jsonl", "OUT_DIR")
    # where the parts come from
    init: str | None = _opt(
        None,
        "AltCap model directory, name or Hub id: its image encoder, GPT-2 and tokenizer are "
        "used (the image encoder must be the one that made the embeddings), and its values "
        "become the defaults of {init_overrides}",
        "parts",
        metavar="MODEL",
    )
    keep_mapper: bool = _opt(
        False, "start from --init's mapper too (the mapping options must match it)", "parts"
    )
    image_encoder: str | None = _opt(
        None,
        "CLIP model: Hub id or directory (a whole CLIP model also gives its text tower, for "
        "confidence scores), or an AltCap model directory (its vision and text towers)",
        "parts",
        shown="the one that made the embeddings",
        metavar="ID|DIR",
    )
    language_model: str | None = _opt(
        None,
        "GPT-2 weights + tokenizer: Hub id or directory, or an AltCap model directory (its "
        "GPT-2 and tokenizer)",
        "parts",
        shown="gpt2",
        metavar="ID|DIR",
    )
    # model
    mapping: str | None = _opt(
        None,
        "mlp: the paper's MLP with GPT-2 fine-tuned; transformer: its transformer mapper "
        "with GPT-2 frozen",
        "model",
        paper="mlp",
        choices=MAPPINGS,
    )
    prefix_length: int | None = _opt(None, "GPT-2 embeddings per image", "model", paper=10)
    clip_length: int | None = _opt(None, "transformer mapper: CLIP tokens", "model", paper=10)
    num_layers: int | None = _opt(None, "transformer mapper: layers", "model", paper=8)
    normalize_prefix: bool | None = _opt(
        None, "L2-normalise the CLIP embedding before the mapper", "model", paper=False
    )
    language: str | None = _opt(
        None,
        "the training captions' language, a BCP 47 tag (en, de, pt-BR): services mark the "
        "captions with it (HTML lang)",
        "model",
        paper="en",
        metavar="TAG",
    )
    finetune_lm: bool | None = _opt(
        None, "train GPT-2's weights too", "model", shown="yes with mlp, no with transformer"
    )
    # optimisation (defaults: the paper's COCO run)
    epochs: int = _opt(10, "passes over the training captions", "optimisation")
    batch_size: int = _opt(40, "captions per step per process", "optimisation")
    lr: float = _opt(
        2e-5,
        "AdamW peak learning rate. The paper's, for COCO's 566k captions: a new mapper on a "
        "small set learns nothing at it for thousands of steps (the docs' small-set "
        f"recipe from scratch uses {RECIPE_LR})",
        "optimisation",
    )
    weight_decay: float = _opt(0.0, "AdamW weight decay", "optimisation")
    warmup_steps: int = _opt(
        5000, "linear warm-up over N steps, then linear decay to 0 at the last", "optimisation"
    )
    max_steps: int | None = _opt(
        None, "stop (and end the schedule) after N optimizer steps", "optimisation", shown="off"
    )
    grad_clip: float = _opt(1.0, "max gradient norm; 0: off", "optimisation")
    precision: str = _opt(
        "auto",
        "auto: bf16 on a GPU that has it, else fp16 with loss scaling; on the CPU bf16 where "
        "it has bfloat16 instructions (AVX512-BF16), else fp32 (the first line of the run "
        "says which)",
        "optimisation",
        choices=PRECISIONS,
    )
    max_length: int = _opt(40, "caption tokens, end-of-text included", "optimisation")
    seed: int = _opt(0, "initialisation, data order, dropout", "optimisation")
    val_fraction: float = _opt(
        0.01, "images held out, all their captions with them, for validation", "optimisation"
    )
    # running (free to change on --resume)
    device: str | None = _opt(None, "cpu, cuda or cuda:N", "running", shown="auto")
    workers: int = _opt(2, "data loader processes", "running")
    save_every: int = _opt(1000, "checkpoint every N steps; 0: at epoch ends only", "running")
    keep: int = _opt(3, "checkpoints kept, the newest", "running")
    log_every: int = _opt(50, "steps per loss line in log.jsonl", "running")
    samples: int = _opt(3, "sample captions shown per epoch", "running")
    resume: bool = _opt(
        False,
        "continue exactly from OUT_DIR's newest checkpoint (same options required)",
        "running",
    )

    @staticmethod
    def paper(name: str) -> Any:
        """The value a blank model option takes when no --init model gives one."""
        return _FIELDS[name].metadata["paper"]

    def validate(self) -> TrainOptions:
        checks = [
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.lr > 0, "--lr must be > 0"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.warmup_steps >= 0, "--warmup-steps must be >= 0"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
            (self.grad_clip >= 0, "--grad-clip must be >= 0 (0: off)"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.max_length >= 2, "--max-length must be >= 2"),
            (0.0 <= self.val_fraction < 1.0, "--val-fraction must be in [0, 1)"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.save_every >= 0, "--save-every must be >= 0"),
            (self.keep >= 1, "--keep must be >= 1"),
            (self.log_every >= 1, "--log-every must be >= 1"),
            (self.samples >= 0, "--samples must be >= 0"),
            (self.mapping in (None, *MAPPINGS), "--mapping must be mlp or transformer"),
            (
                self.language is None or is_language_tag(self.language),
                "--language must be a language tag such as en or pt-BR",
            ),
            (
                not (self.init and (self.image_encoder or self.language_model)),
                "--init takes the image encoder and language model from a model directory: "
                "give either --init or --image-encoder/--language-model",
            ),
            (not self.keep_mapper or self.init, "--keep-mapper needs --init MODEL_DIR"),
        ]
        for name in ("prefix_length", "clip_length", "num_layers"):
            v = getattr(self, name)
            checks.append((v is None or v >= 1, f"{flag(name)} must be >= 1"))
        for ok, message in checks:
            if not ok:
                raise InvalidSettings(message)
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(TrainOptions)}
_HINTS = typing.get_type_hints(TrainOptions)


def flag(name: str) -> str:
    """``prefix_length`` -> ``--prefix-length``."""
    return "--" + name.replace("_", "-")


def from_init() -> list[str]:
    """The options whose blank value is --init's (the model options with a paper default)."""
    return [f.name for f in _FIELDS.values() if f.metadata["paper"] is not None]


def _base_type(name: str) -> type:
    hint = _HINTS[name]
    if isinstance(hint, types.UnionType):  # int | None -> int
        return next(a for a in get_args(hint) if a is not type(None))
    return hint


def shown_default(f: dataclasses.Field) -> str:
    """The default as help and the docs write it."""
    m = f.metadata
    if m["paper"] is not None:
        paper = m["paper"]
        paper = ("on" if paper else "off") if isinstance(paper, bool) else paper
        return f"--init's, else {paper}"
    if m.get("shown") is not None:
        return m["shown"]
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return "" if f.default is None else str(f.default)  # "": nothing to say


def help_text(f: dataclasses.Field) -> str:
    """A field's help with its default, as ``--help`` shows it."""
    text = f.metadata["help"].format(init_overrides=", ".join(map(flag, from_init())))
    if f.default is dataclasses.MISSING:
        return text
    if f.default is False or not shown_default(f):
        return text  # a plain switch (off unless given), or nothing to say
    return f"{text} (default: {shown_default(f)})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every TrainOptions field to ``parser``: a positional for those without a default,
    else ``--flag`` in its group; the type, choices and help come from the field."""
    groups: dict[str, Any] = {}
    for key, title in GROUPS.items():
        groups[key] = parser.add_argument_group(title) if title else parser
    for f in _FIELDS.values():
        m, where = f.metadata, groups[f.metadata["group"]]
        if f.default is dataclasses.MISSING:
            where.add_argument(f.name, metavar=m["metavar"], help=help_text(f))
            continue
        kind = _base_type(f.name)
        kw: dict[str, Any] = {"dest": f.name, "default": f.default, "help": help_text(f)}
        if kind is bool:
            kw["action"] = "store_true" if f.default is False else argparse.BooleanOptionalAction
        else:
            kw["type"] = kind
            if m["choices"]:
                kw["choices"] = m["choices"]
            if m["metavar"] or kind is int:
                kw["metavar"] = m["metavar"] or "N"
        where.add_argument(flag(f.name), **kw)


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    return TrainOptions(**{k: getattr(args, k) for k in _FIELDS if hasattr(args, k)})


def options_table() -> str:
    """Every option with its default and meaning, as Markdown (the docs' table)."""
    lines = ["| option | default | meaning |", "|---|---|---|"]
    for f in _FIELDS.values():
        if f.default is dataclasses.MISSING:
            continue
        m = f.metadata
        meaning = (
            m["help"].format(init_overrides=", ".join(map(flag, from_init()))).replace("|", "\\|")
        )
        default = shown_default(f).replace("|", "\\|") or "—"
        choices = " " + "\\|".join(m["choices"]) if m["choices"] else ""
        name = f"`{flag(f.name)}{choices}`"
        lines.append(f"| {name} | {default} | {meaning} |")
    return "\n".join(lines)
