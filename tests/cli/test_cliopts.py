"""The shared decoding and device options of ``caption``, ``batch`` and ``evaluate``."""

import argparse

import pytest

from captioner.cli.main import build_parser
from captioner.cliopts import add_decoding_arguments, add_device_arguments, decoding_from_args
from captioner.config import DecodingSettings
from captioner.errors import InvalidSettings

FLAGS = [
    "--decoding",
    "nucleus",
    "--beam-size",
    "3",
    "--top-p",
    "0.5",
    "--temperature",
    "0.7",
    "--seed",
    "11",
    "--max-tokens",
    "20",
    "--device",
    "cpu",
    "--dtype",
    "bfloat16",
]
WANTED = DecodingSettings(
    method="nucleus", beam_size=3, top_p=0.5, temperature=0.7, seed=11, max_tokens=20
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_decoding_arguments(p.add_argument_group("decoding"))
    add_device_arguments(p)
    return p


def test_defaults_are_decoding_settings_defaults():
    args = _parser().parse_args([])
    assert decoding_from_args(args) == DecodingSettings()
    assert (args.device, args.dtype) == (None, None)


def test_flags_become_settings():
    args = _parser().parse_args(FLAGS)
    assert decoding_from_args(args) == WANTED
    assert (args.device, args.dtype) == ("cpu", "bfloat16")


@pytest.mark.parametrize(
    "flags", [["--max-tokens", "0"], ["--beam-size", "33"], ["--top-p", "1.5"]]
)
def test_out_of_range_is_invalid_settings(flags):
    with pytest.raises(InvalidSettings):
        decoding_from_args(_parser().parse_args(flags))


@pytest.mark.parametrize(
    "argv",
    [
        ["caption", "a.png"],
        ["batch", "--pages", "http://example.com/"],
        ["evaluate", "MODEL", "ANN"],
    ],
)
def test_every_captioning_subcommand_takes_the_same_flags(argv):
    args = build_parser().parse_args([*argv, *FLAGS])
    assert decoding_from_args(args) == WANTED
    assert (args.device, args.dtype) == ("cpu", "bfloat16")
    defaults = build_parser().parse_args(argv)
    assert decoding_from_args(defaults) == DecodingSettings()
