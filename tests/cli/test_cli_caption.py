"""`python -m captioner caption` given folders: their images, sorted, each line naming its file
(issue 19, item 14: it failed with `not_an_image ... Is a directory`); the text in images
read with the real Tesseract (issue 22)."""

from __future__ import annotations

import json
import time

from helpers import png_bytes
from testsite import SALE_TEXT, SIGN_TEXT, sale_png, shop_png

from captioner.cli.main import main
from captioner.describe import describe


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


def test_caption_reads_the_text_in_images(tiny_dir, tmp_path, capsys, monkeypatch):
    """Issue 22: --json lines carry caption, text, alt and alt_from; plain output is the alt;
    --no-read-text leaves the text out; the alt is bounded by ALTCAP_MAX_ALT_CHARS."""
    (tmp_path / "sale.png").write_bytes(sale_png())
    (tmp_path / "shop.png").write_bytes(shop_png())
    images = [str(tmp_path / "sale.png"), str(tmp_path / "shop.png")]
    common = ["--model", str(tiny_dir), "--max-tokens", "4"]
    assert main(["caption", *images, *common, "--json"]) == 0
    sale, shop = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (sale["text"], sale["alt"], sale["alt_from"]) == (SALE_TEXT, SALE_TEXT, "text")
    assert (shop["text"], shop["alt_from"]) == (SIGN_TEXT, "caption_and_text")
    assert shop["alt"] == describe(shop["caption"], SIGN_TEXT, False)["alt"]
    assert shop["alt"].endswith(f"Appears to say: {SIGN_TEXT}")
    assert "warnings" not in sale and sale["model"] and sale["language"] == "en"

    monkeypatch.setenv("ALTCAP_MIN_CONFIDENCE", "0")  # the tiny text tower's are noise
    assert main(["caption", *images, *common]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{images[0]}\t{SALE_TEXT}",
        f"{images[1]}\t{shop['alt']}",
    ]
    # an alt resting on a caption the model does not believe is marked; the text's is not
    monkeypatch.setenv("ALTCAP_MIN_CONFIDENCE", "1")
    assert main(["caption", *images, *common]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{images[0]}\t{SALE_TEXT}",
        f"{images[1]}\t(not confident) {shop['alt']}",
    ]
    monkeypatch.delenv("ALTCAP_MIN_CONFIDENCE")

    assert main(["caption", images[1], *common, "--json", "--no-read-text"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert "text" not in line and (line["alt"], line["alt_from"]) == (line["caption"], "caption")

    monkeypatch.setenv("ALTCAP_MAX_ALT_CHARS", "16")
    assert main(["caption", images[1], "--model", str(tiny_dir), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert len(line["alt"]) <= 16 and len(line["caption"]) <= 16


def test_caption_says_when_the_text_could_not_be_read(tiny_dir, tmp_path, capsys, monkeypatch):
    from captioner.read.reader import TextReader

    read = TextReader.read

    def slow_read(self, image, timeout_s=None):  # slowed down; its output is its own
        time.sleep(1.0)
        return read(self, image, timeout_s=timeout_s)

    monkeypatch.setattr(TextReader, "read", slow_read)
    monkeypatch.setenv("ALTCAP_OCR_TIMEOUT_S", "0.2")
    (tmp_path / "sale.png").write_bytes(sale_png())
    args = ["caption", str(tmp_path / "sale.png"), "--model", str(tiny_dir), "--json"]
    assert main([*args, "--max-tokens", "4"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["warnings"] == ["ocr_timeout"] and "text" not in line
    assert (line["alt"], line["alt_from"]) == (line["caption"], "caption")
