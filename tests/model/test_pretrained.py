"""Named models and Hub ids, with the download faked at the huggingface_hub boundary."""

from __future__ import annotations

import pytest
from helpers import png_bytes, write_reference_parts

import captioner.model.pretrained as pretrained
from captioner import Captioner
from captioner.errors import DownloadFailed, ModelNotFound


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A Hub with the tiny parts of a named model; records what was asked for."""
    pt, vision_dir, lm_dir, _ = write_reference_parts(tmp_path / "hub", "mlp")
    repos = {
        "openai/clip-vit-base-patch32": vision_dir,
        "gpt2": lm_dir,
        "someone/altcap-tiny": None,  # filled by a test that needs a model-dir repo
    }
    calls = []

    def hf_hub_download(repo, filename, **kw):
        calls.append(("file", repo, filename))
        assert repo == "akhaliq/CLIP-prefix-captioning-COCO-weights"
        assert filename == "coco_weights.pt"
        return str(pt)

    def snapshot_download(repo, allow_patterns=None, **kw):
        calls.append(("snapshot", repo, tuple(allow_patterns or ())))
        if repos.get(repo) is None:
            raise OSError(f"404 for {repo}")
        return str(repos[repo])

    monkeypatch.setattr(pretrained.huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(pretrained.huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("ALTCAP_CACHE", str(tmp_path / "cache"))
    # the tiny checkpoint has a 4-token prefix where the real COCO weights have 10
    spec = pretrained.REGISTRY["clipcap-coco"]
    monkeypatch.setitem(
        pretrained.REGISTRY,
        "clipcap-coco",
        pretrained.PretrainedSpec(**{**spec.__dict__, "prefix_length": 4}),
    )
    return repos, calls, tmp_path


def test_named_model_is_fetched_converted_and_cached(fake_hub):
    _repos, calls, tmp = fake_hub
    cap = Captioner.from_pretrained("clipcap-coco", device="cpu")
    assert (tmp / "cache" / "clipcap-coco" / "config.json").is_file()
    assert cap.config.image_encoder == "openai/clip-vit-base-patch32"
    assert "coco_weights.pt" in cap.config.source
    assert ("file", "akhaliq/CLIP-prefix-captioning-COCO-weights", "coco_weights.pt") in calls
    n = len(calls)
    Captioner.from_pretrained("clipcap-coco", device="cpu")  # second time: from the cache
    assert len(calls) == n


def test_first_use_prints_each_step_once_when_stderr_is_no_terminal(fake_hub, capfd):
    """In a log file (cron, CI) the "Preparing" bar came out twice, with transformers'
    loading bar and its cursor escapes between: there, a plain line per step, no bars."""
    import huggingface_hub
    from transformers.utils import logging as tf_logging

    _repos, _calls, tmp = fake_hub
    bars = huggingface_hub.utils.are_progress_bars_disabled(), tf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    Captioner.from_pretrained("clipcap-coco", device="cpu")
    err = capfd.readouterr().err
    assert "\r" not in err and "\x1b[" not in err and "Loading weights" not in err
    assert [line for line in err.splitlines() if "clipcap-coco" in line] == [
        "Preparing clipcap-coco (first use): downloading its parts from the Hugging Face Hub",
        "Preparing clipcap-coco: converting coco_weights.pt",
        f"Preparing clipcap-coco: saved to {tmp / 'cache' / 'clipcap-coco'}",
    ]
    # the libraries' own bars are as they were
    assert (
        huggingface_hub.utils.are_progress_bars_disabled(),
        tf_logging.is_progress_bar_enabled(),
    ) == bars


def test_first_use_shows_a_bar_on_a_terminal(fake_hub, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    Captioner.from_pretrained("clipcap-coco", device="cpu")
    shown = terminal.getvalue()
    assert "Preparing clipcap-coco: 100%" in shown and "(first use)" not in shown


def test_offline_failure_names_the_download_and_the_way_out(fake_hub, monkeypatch):
    def offline(*a, **kw):
        raise OSError("We couldn't connect to the Hub (offline mode is enabled)")

    monkeypatch.setattr(pretrained.huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DownloadFailed) as e:
        Captioner.from_pretrained("clipcap-coco", device="cpu")
    msg = e.value.message
    assert "coco_weights.pt" in msg and "akhaliq/CLIP-prefix-captioning-COCO-weights" in msg
    assert "convert-clipcap" in msg and "--model" in msg
    assert e.value.code == "download_failed"


def test_hub_repo_holding_a_model_dir(fake_hub, tiny_dir):
    repos, _calls, _ = fake_hub
    repos["someone/altcap-tiny"] = tiny_dir
    cap = Captioner.from_pretrained("someone/altcap-tiny", device="cpu")
    assert cap.model_id == "someone/altcap-tiny"
    with pytest.raises(DownloadFailed):
        Captioner.from_pretrained("someone/missing", device="cpu")


def test_unknown_names_and_folders(tmp_path):
    with pytest.raises(ModelNotFound) as e:
        pretrained.resolve("no such model!")
    assert "clipcap-coco" in e.value.message
    with pytest.raises(ModelNotFound) as e:
        pretrained.resolve(str(tmp_path))
    assert "not a model directory" in e.value.message


def test_named_model_takes_the_text_tower_from_its_clip_model(fake_hub):
    """The Hub's CLIP repo is a whole CLIPModel: both towers and the tokenizer come from it."""
    from captioner.model.tiny import save_clip_model, tiny_tokenizer_and_model

    repos, calls, tmp = fake_hub
    _, original = tiny_tokenizer_and_model("mlp", seed=0)
    repos["openai/clip-vit-base-patch32"] = save_clip_model(original, tmp / "hub" / "clip")
    cap = Captioner.from_pretrained("clipcap-coco", device="cpu")
    assert cap.can_score and cap.config.text_encoder == "openai/clip-vit-base-patch32"
    asked = {
        p for kind, repo, pats in calls if repo == "openai/clip-vit-base-patch32" for p in pats
    }
    assert {"tokenizer_config.json", "vocab.json", "merges.txt"} <= asked
    result = cap.caption(png_bytes(), max_tokens=5)[0]
    assert 0.0 < result.confidence < 1.0 and "confidence" in result.to_dict()


def test_named_model_from_a_vision_only_clip_still_captions(fake_hub):
    cap = Captioner.from_pretrained("clipcap-coco", device="cpu")  # the fixture's CLIP: vision
    assert not cap.can_score and cap.config.text_encoder == ""
    result = cap.caption(png_bytes(), max_tokens=5)[0]
    assert result.confidence is None and "confidence" not in result.to_dict()
