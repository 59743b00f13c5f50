"""Model identity: the name clients see, and the name the caption cache keys on.

``ALTCAP_MODEL`` (or ``--model``) as written is a poor name for either. For a local model
directory it is a path: clients should not learn the server's file layout from it, and it
stays the same when someone retrains into the same directory, so a cache that survives
restarts (SQLite in ``ALTCAP_DATA_DIR``, Redis) would keep serving the old model's captions.

``model_identity`` therefore answers two names, computed once when a process starts:

- ``name``, the public name. Registry names and Hub ids are reported as given. A local
  directory is reported as its last two path components plus a short fingerprint,
  ``photos/final@1a2b3c4d``: ``final`` alone says nothing (every training run ends in one),
  two components say which run, and the fingerprint says which version of it.
- ``cache_id``, what cache keys and ETags are built from. For a registry name or Hub id it
  is the name: their weights are fixed per name. For a local directory it is
  ``local:<fingerprint>``, a SHA-256 over what loading the directory reads: every ``*.json``
  and ``*.txt`` file (config, tokenizer) byte for byte, and ``model.safetensors``' size,
  header (tensor names, dtypes, shapes, offsets) and three 4 KiB samples of every tensor
  (start, middle, end). Training changes every element of what it trains, so a retrained
  or fine-tuned model gets a new fingerprint; reading a few megabytes costs milliseconds
  where hashing all 500 MB would cost seconds at every start. The fingerprint depends on
  content only, not on paths, inodes or times, so copies of one directory on several
  machines share one Redis cache and one set of ETags. (An edit by hand of bytes in the
  middle of a large tensor that leaves all three samples alone would go unnoticed.)

No torch here: the service builds identities before it imports the model code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from captioner.errors import ModelError
from captioner.lang import is_language_tag

__all__ = ["HUB_ID", "ModelChanged", "ModelIdentity", "model_identity", "redact_model_path"]

# ``owner/name`` on the Hugging Face Hub (``captioner.model.pretrained`` resolves these).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

WEIGHTS_NAME = "model.safetensors"  # = checkpoints.WEIGHTS_NAME (that module imports torch)
SAMPLE = 4096  # bytes read at each of a tensor's three sample points
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
SHORT = 8  # hex digits of the fingerprint in the public name

Hasher = Any  # a hashlib hash object (its class is private)


class ModelChanged(ModelError):
    """The model directory changed between start-up and loading: the loaded weights are not
    the ones the cache identity describes, so serving them could poison the cache."""

    code = "model_changed"


@dataclass(frozen=True)
class ModelIdentity:
    """The two names of the model a process serves (see the module docstring)."""

    name: str  # public: responses, /readyz, the page, CLI --json
    cache_id: str  # cache keys and ETags; changes whenever the weights or config do
    # The captions' language tag, where known before loading: a local directory's config
    # says it (one without says nothing: ClipCap's English); names and Hub ids tell it once
    # loaded (the service then asks the loaded model).
    language: str | None = None


def model_identity(name_or_path: str) -> ModelIdentity:
    """The public name and the cache identity of ``ALTCAP_MODEL`` / ``--model``.

    Never raises for a model that cannot be loaded: loading reports that, with its own error.
    A path that names no directory (yet) gets a public name without fingerprint and a cache
    identity no loadable directory can have; ``app.default_loader`` refuses to serve a model
    whose identity differs from the one computed at start-up.
    """
    given = name_or_path.strip()
    path = Path(given).expanduser()
    if path.is_dir():
        fingerprint = directory_fingerprint(path)
        name = f"{_short_path(path)}@{fingerprint[:SHORT]}"
        return ModelIdentity(name, f"local:{fingerprint}", _declared_language(path))
    if _looks_like_path(given):
        return ModelIdentity(_short_path(path), f"missing:{_short_path(path)}")
    return ModelIdentity(given, given)


def _declared_language(path: Path) -> str | None:
    """The ``language`` of a model directory's config.json ("en" when it has none, as
    ClipCap's models); None when the config cannot be read or names no valid tag (loading
    reports what is wrong with it)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    language = config.get("language", "en") if isinstance(config, dict) else None
    return language if is_language_tag(language) else None


def redact_model_path(text: str, name_or_path: str, public_name: str) -> str:
    """``text`` (an error message meant for clients) with the model's local path replaced by
    its public name: load errors name the path, which is right for the log only."""
    given = name_or_path.strip()
    if not _looks_like_path(given) and not Path(given).expanduser().is_dir():
        return text
    path = Path(given).expanduser()
    spellings = {given, str(path), str(path.resolve()), str(path.absolute())}
    for spelling in sorted(spellings, key=len, reverse=True):  # longest first: no partial hits
        text = text.replace(spelling, public_name)
    return text


def directory_fingerprint(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 over a model directory's small files and samples of its weights."""
    h = hashlib.sha256(b"altcap-model-dir-v1\0")
    root = Path(path)
    files = sorted(
        p for p in root.iterdir() if p.suffix in (".json", ".txt") and not p.name.startswith(".")
    )
    for p in files:
        try:
            data = p.read_bytes()
        except OSError:  # unreadable or vanished: the loader will say so
            data = b"\xff"
        _update(h, p.name.encode("utf-8"), data)
    weights = root / WEIGHTS_NAME
    try:
        with open(weights, "rb") as f:
            _update(h, WEIGHTS_NAME.encode("utf-8"))
            _sample_safetensors(h, f)
    except OSError:
        _update(h, b"no weights")
    return h.hexdigest()


def _sample_safetensors(h: Hasher, f: BinaryIO) -> None:
    """Feed ``h`` the file's size, its header and samples of every tensor's bytes."""
    size = os.fstat(f.fileno()).st_size
    _update(h, str(size).encode())
    n = int.from_bytes(f.read(8), "little")
    base = 8 + n
    header = f.read(n) if 0 < n <= min(size - 8, MAX_HEADER) else b""
    try:
        entries = json.loads(header)
        spans = sorted(_span(v, size - base) for k, v in entries.items() if k != "__metadata__")
    except (ValueError, TypeError, KeyError, AttributeError):  # not safetensors: loading says so
        f.seek(0)
        _update(h, b"unparsed", f.read(16 * SAMPLE))
        return
    # Parsed and re-serialised with sorted keys: safetensors writes its metadata (the names
    # of tied tensors) in no fixed order, so equal models can have different header bytes.
    _update(h, json.dumps(entries, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    for begin, end in spans:
        for start, stop in _samples(begin, end):
            f.seek(base + start)
            h.update(f.read(stop - start))


def _span(entry: dict[str, Any], data_size: int) -> tuple[int, int]:
    """A tensor's ``data_offsets``, checked to lie inside the file."""
    begin, end = (int(x) for x in entry["data_offsets"])
    if not 0 <= begin <= end <= data_size:
        raise ValueError("tensor data outside the file")
    return begin, end


def _samples(begin: int, end: int) -> list[tuple[int, int]]:
    """Byte ranges of one tensor to read: all of it when small, else start, middle and end."""
    if end - begin <= 3 * SAMPLE:
        return [(begin, end)]
    middle = begin + (end - begin) // 2 - SAMPLE // 2
    return [(begin, begin + SAMPLE), (middle, middle + SAMPLE), (end - SAMPLE, end)]


def _update(h: Hasher, *parts: bytes) -> None:
    """Length-prefixed, so that no two different sequences of parts hash alike."""
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)


def _looks_like_path(text: str) -> bool:
    """A filesystem path rather than a registry name or Hub id (as ``pretrained.resolve``
    reads them: an existing directory first, then a name, then ``owner/name``)."""
    if HUB_ID.match(text):
        return False
    return "/" in text or "\\" in text or text.startswith(("~", "."))


def _short_path(path: Path) -> str:
    """The last two components of the absolute path: ``/srv/models/x/final`` → ``x/final``."""
    parts = path.resolve().parts[1:]  # without the root ("/", "C:\\")
    return "/".join(parts[-2:]) or "model"
