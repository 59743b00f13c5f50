"""The embedding store: round trip, resumable appends, damaged files, encoder fingerprints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from captioner.model.tiny import tiny_config
from captioner.train.store import (
    INDEX_NAME,
    EmbeddingStore,
    EncoderInfo,
    EncoderMismatch,
    StoreError,
    vision_sha,
    weights_sha,
)

DIM = 24


@pytest.fixture
def info() -> EncoderInfo:
    return EncoderInfo.from_config(tiny_config(400))


def _records(start: int, n: int) -> list[dict]:
    return [
        {"id": str(i), "image": f"/img/{i}.png", "captions": [f"cap {i}"]}
        for i in range(start, start + n)
    ]


def _filled(tmp_path, info) -> tuple[EmbeddingStore, torch.Tensor]:
    store = EmbeddingStore.create(tmp_path / "s", info, {"fingerprint": "abc"}, shard_items=3)
    embeds = torch.randn(5, DIM)
    store.append_shard(
        embeds[:2],
        _records(0, 2),
        [{"image": "/img/x.png", "code": "image_missing", "message": "gone"}],
        items=3,
    )
    store.append_shard(embeds[2:], _records(2, 3), items=3)
    store.mark_complete()
    return store, embeds


def test_round_trip(tmp_path, info):
    store, embeds = _filled(tmp_path, info)
    again = EmbeddingStore.open(store.path)
    assert again.encoder == info
    assert again.index.dataset == {"fingerprint": "abc"}
    assert again.index.items_done == 6 and again.index.rows == 5 and again.index.complete
    assert again.index.skipped == [
        {"image": "/img/x.png", "code": "image_missing", "message": "gone"}
    ]
    loaded, records = again.load()
    assert loaded.dtype == torch.float32 and torch.equal(loaded, embeds)
    assert records == _records(0, 5)
    assert not list(store.path.glob("*.tmp"))  # atomic writes leave no temp files


def test_incomplete_store_loads_only_on_request(tmp_path, info):
    store = EmbeddingStore.create(tmp_path, info, {}, shard_items=2)
    store.append_shard(torch.ones(2, DIM), _records(0, 2), items=2)
    with pytest.raises(StoreError, match="incomplete"):
        EmbeddingStore.open(tmp_path).load()
    embeds, records = EmbeddingStore.open(tmp_path).load(require_complete=False)
    assert embeds.shape == (2, DIM) and len(records) == 2


def test_refusals(tmp_path, info):
    store, _ = _filled(tmp_path, info)
    with pytest.raises(StoreError, match="already holds"):
        EmbeddingStore.create(store.path, info, {})
    with pytest.raises(StoreError, match="complete"):
        store.append_shard(torch.ones(1, DIM), _records(0, 1), items=1)
    fresh = EmbeddingStore.create(tmp_path / "fresh", info, {})
    with pytest.raises(StoreError, match="24-d"):
        fresh.append_shard(torch.ones(1, DIM + 1), _records(0, 1), items=1)
    with pytest.raises(StoreError, match="one record per row"):
        fresh.append_shard(torch.ones(2, DIM), _records(0, 1), items=2)
    with pytest.raises(StoreError, match="items must equal"):
        fresh.append_shard(torch.ones(1, DIM), _records(0, 1), items=3)
    with pytest.raises(StoreError, match="no embedding store"):
        EmbeddingStore.open(tmp_path / "nowhere")


def test_an_orphan_shard_from_a_crash_is_overwritten(tmp_path, info):
    store = EmbeddingStore.create(tmp_path, info, {}, shard_items=2)
    store.append_shard(torch.zeros(2, DIM), _records(0, 2), items=2)
    (tmp_path / "shard-00001.safetensors").write_bytes(b"half a shard")  # crash before the index
    again = EmbeddingStore.open(tmp_path)
    assert again.index.items_done == 2
    again.append_shard(torch.ones(1, DIM), _records(2, 1), items=1)
    again.mark_complete()
    embeds, records = EmbeddingStore.open(tmp_path).load()
    assert embeds.shape == (3, DIM) and [r["id"] for r in records] == ["0", "1", "2"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{broken",
        "[1, 2]",
        json.dumps({"format": "something-else", "version": 1}),
        "MISSING_KEY",
    ],
)
def test_damaged_index(tmp_path, info, text):
    store, _ = _filled(tmp_path, info)
    index = store.path / INDEX_NAME
    if text == "MISSING_KEY":
        d = json.loads(index.read_text())
        del d["shard_items"]
        text = json.dumps(d)
    index.write_text(text)
    with pytest.raises(StoreError) as e:
        EmbeddingStore.open(store.path).load()
    assert e.value.code == "invalid_embeddings"


def test_damaged_or_missing_shard(tmp_path, info):
    store, _ = _filled(tmp_path, info)
    shard = store.path / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:40])  # truncated
    with pytest.raises(StoreError, match="cannot read shard"):
        EmbeddingStore.open(store.path).load()
    shard.unlink()
    with pytest.raises(StoreError, match="cannot read shard"):
        EmbeddingStore.open(store.path).load()


def test_shard_disagreeing_with_index(tmp_path, info):
    store, _ = _filled(tmp_path, info)
    d = json.loads((store.path / INDEX_NAME).read_text())
    d["shards"][0]["rows"] = 7
    (store.path / INDEX_NAME).write_text(json.dumps(d))
    with pytest.raises(StoreError, match="the index says 7"):
        EmbeddingStore.open(store.path).load()


# --- encoder info ---------------------------------------------------------------------------


def test_encoder_info_round_trip_and_differences(info):
    assert EncoderInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    bigger = EncoderInfo.from_config(tiny_config(400, image_size=64))
    diff = info.differences(bigger)
    assert any(d.startswith("image_size") for d in diff)
    assert any(d.startswith("vision_sha") for d in diff)  # image size is part of the arch
    with pytest.raises(EncoderMismatch) as e:
        info.check(bigger, "the model")
    assert e.value.code == "encoder_mismatch" and "image_size" in e.value.message
    info.check(dataclasses.replace(info, image_encoder="a copy elsewhere"), "same")  # provenance


def test_weights_sha_compared_only_when_both_known(info):
    a = dataclasses.replace(info, weights_sha="a" * 64)
    b = dataclasses.replace(info, weights_sha="b" * 64)
    assert a.differences(info) == [] and info.differences(b) == []
    assert a.differences(b) == ["weights_sha: the vision weights differ"]


def test_vision_sha_ignores_defaults_and_provenance():
    """A tiny config lists only its overrides; the full to_dict() of the same tower must hash
    the same, or embeddings made through --image-encoder could never train that model."""
    from transformers import CLIPVisionConfig

    partial = tiny_config(400).vision_config
    full = CLIPVisionConfig(**partial).to_dict()
    full["_name_or_path"] = "/somewhere"
    assert len(full) > len(partial)
    assert vision_sha(full) == vision_sha(partial)
    assert vision_sha({**partial, "num_hidden_layers": 3}) != vision_sha(partial)


def test_weights_sha_follows_the_values_not_the_dtype():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    before = weights_sha(m)
    assert weights_sha(m.to(torch.float64)) == before
    with torch.no_grad():
        m.weight[0, 0] += 1
    assert weights_sha(m) != before
