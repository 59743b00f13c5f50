"""`python -m captioner caption` given folders: their images, sorted, each line naming its file
(issue 19, item 14: it failed with `not_an_image ... Is a directory`)."""

from __future__ import annotations

import json

from helpers import png_bytes

from captioner.cli.main import main


def test_caption_a_folder(tiny_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name, colour in (("b.png", "red"), ("a.PNG", "blue"), ("sub/c.png", "green")):
        (photos / name).write_bytes(png_bytes(colour))
    (photos / "a.txt").write_text("a caption file, not an image\n")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    rc = main(["caption", str(photos), "--model", str(tiny_dir), "--max-tokens", "6"])
    out, err = capsys.readouterr()
    assert rc == 1  # broken.jpg fails alone, on one line
    assert err.strip().splitlines() == [
        f"error: {photos / 'broken.jpg'}: not_an_image: " + err.split("not_an_image: ")[1].strip()
    ]
    lines = [line.split("\t") for line in out.splitlines()]
    assert [p for p, _ in lines] == [str(photos / n) for n in ("a.PNG", "b.png", "sub/c.png")]
    assert all(text for _, text in lines)

    # one image in a folder is still named; --json names every image too
    single = tmp_path / "single"
    single.mkdir()
    (single / "x.png").write_bytes(png_bytes())
    assert main(["caption", str(single), "--model", str(tiny_dir), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["image"] == str(single / "x.png") and "caption" in row
    assert main(["caption", str(single), "--model", str(tiny_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"{single / 'x.png'}\t")


def test_a_folder_without_images_is_one_line(tiny_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here\n")
    assert main(["caption", str(empty), "--model", str(tiny_dir)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {empty}: not_an_image: no images in this folder (")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
