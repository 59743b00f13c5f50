"""Model identity: public names that hide local paths, cache identities that follow the weights."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from app import default_loader
from captioner.model.identity import (
    SAMPLE,
    ModelChanged,
    model_identity,
    redact_model_path,
)
from captioner.model.tiny import make_tiny
from captioner.serve.settings import Settings


@pytest.fixture
def model_dir(tiny_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model at .../runs/photos/final, free to be retrained."""
    target = tmp_path / "runs" / "photos" / "final"
    shutil.copytree(tiny_dir, target)
    return target


def tensor_offsets(weights: Path) -> tuple[int, dict[str, list[int]]]:
    """(start of the data, name -> [begin, end]) from a safetensors file's header."""
    raw = weights.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return 8 + n, {k: v["data_offsets"] for k, v in header.items() if k != "__metadata__"}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name", ["clipcap-coco", "clipcap-conceptual", "someone/altcap-tiny", "owner/model.v2"]
)
def test_names_and_hub_ids_are_reported_and_keyed_as_given(name: str) -> None:
    ident = model_identity(name)
    assert (ident.name, ident.cache_id) == (name, name)
    assert model_identity(f"  {name}\n") == ident


def test_a_local_directory_gets_a_short_public_name_and_a_content_id(model_dir: Path) -> None:
    ident = model_identity(str(model_dir))
    assert re.fullmatch(r"photos/final@[0-9a-f]{8}", ident.name), ident.name
    assert re.fullmatch(r"local:[0-9a-f]{64}", ident.cache_id), ident.cache_id
    assert ident.name.endswith("@" + ident.cache_id[len("local:") :][:8])
    assert str(model_dir.parent) not in ident.name and str(model_dir.parent) not in ident.cache_id
    # computed again, and from another spelling of the same path: the same identity
    assert model_identity(str(model_dir)) == ident
    assert model_identity(str(model_dir / ".." / "final")) == ident


def test_a_local_directory_says_its_captions_language(model_dir: Path) -> None:
    """Known before loading (answers from the cache); names and Hub ids say it once loaded."""
    assert model_identity(str(model_dir)).language == "en"  # no "language": ClipCap's English
    config = json.loads((model_dir / "config.json").read_text())
    for language, want in (("pt-BR", "pt-BR"), ("Portuguese", None), (7, None)):
        (model_dir / "config.json").write_text(json.dumps({**config, "language": language}))
        assert model_identity(str(model_dir)).language == want
    (model_dir / "config.json").write_text("{not json")
    assert model_identity(str(model_dir)).language is None
    assert model_identity("clipcap-coco").language is None


def test_a_copy_elsewhere_shares_the_cache_identity(model_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model_dir, tmp_path / "other-machine" / "srv" / "model")
    original, copied = model_identity(str(model_dir)), model_identity(str(copy))
    assert copied.cache_id == original.cache_id  # content, not path, inode or mtime
    assert copied.name.startswith("srv/model@")


def test_retraining_into_the_same_directory_changes_the_identity(model_dir: Path) -> None:
    before = model_identity(str(model_dir))
    make_tiny(model_dir, seed=1)  # what `train ... OUT_DIR` does to OUT_DIR/final
    after = model_identity(str(model_dir))
    assert after.cache_id != before.cache_id and after.name != before.name
    make_tiny(model_dir, seed=1)  # the same weights saved again: the same model
    assert model_identity(str(model_dir)) == after


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_changed_bytes_in_a_sampled_part_of_a_tensor_change_the_identity(
    model_dir: Path, where: str
) -> None:
    weights = model_dir / "model.safetensors"
    base, offsets = tensor_offsets(weights)
    # a tensor larger than three samples, so that only sampled bytes are read
    name, (begin, end) = max(offsets.items(), key=lambda kv: kv[1][1] - kv[1][0])
    assert end - begin > 3 * SAMPLE, f"{name} is too small for this test"
    offset = {"start": begin, "middle": begin + (end - begin) // 2, "end": end - 1}[where]
    before = model_identity(str(model_dir)).cache_id
    flip_byte(weights, base + offset)
    assert model_identity(str(model_dir)).cache_id != before


@pytest.mark.parametrize("filename", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_config_and_tokenizer_files_are_part_of_the_identity(
    model_dir: Path, filename: str
) -> None:
    before = model_identity(str(model_dir)).cache_id
    path = model_dir / filename
    assert path.is_file()
    path.write_bytes(path.read_bytes() + b"\n")
    assert model_identity(str(model_dir)).cache_id != before


def test_broken_or_missing_weights_do_not_raise(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + b"not a safetensors file")
    broken = model_identity(str(model_dir))
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00[1, 2, 3]       ")
    listed = model_identity(str(model_dir))
    weights.unlink()
    gone = model_identity(str(model_dir))
    assert len({broken.cache_id, listed.cache_id, gone.cache_id}) == 3
    assert gone.name.startswith("photos/final@")


@pytest.mark.parametrize(
    "given", ["/srv/models/customer-x/final", "./customer-x/final", "~/customer-x/final"]
)
def test_a_path_that_is_no_directory_is_not_reported(given: str) -> None:
    ident = model_identity(given)
    assert ident.name == "customer-x/final"
    assert ident.cache_id == "missing:customer-x/final"  # no loadable directory has this id


def test_load_errors_shown_to_clients_hide_the_path(model_dir: Path) -> None:
    public = model_identity(str(model_dir)).name
    message = f"{model_dir} is a folder but not a model directory"
    assert redact_model_path(message, str(model_dir), public) == (
        f"{public} is a folder but not a model directory"
    )
    missing = "/srv/models/customer-x/final"
    text = f"unknown model {missing!r}: give a model directory"
    assert redact_model_path(text, missing, "customer-x/final") == (
        "unknown model 'customer-x/final': give a model directory"
    )
    assert redact_model_path("no such repo gpt2", "gpt2", "gpt2") == "no such repo gpt2"


def test_the_loader_refuses_a_directory_that_changed_after_start_up(model_dir: Path) -> None:
    settings = Settings.load({}, {"MODEL": str(model_dir), "DEVICE": "cpu"})
    at_start = model_identity(str(model_dir))
    assert default_loader(settings, at_start)() is not None  # unchanged: loads
    make_tiny(model_dir, seed=1)
    with pytest.raises(ModelChanged) as e:
        default_loader(settings, at_start)()
    assert e.value.code == "model_changed" and str(model_dir) not in e.value.message
