"""Synthetic shapes and the data set readers (COCO, Karpathy, CSV, JSONL, folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.train.data import (
    DatasetError,
    Item,
    detect_format,
    read_dataset,
    read_folder,
    read_karpathy,
)
from captioner.train.synthetic import COLOURS, LAYOUTS, make_shapes, shape_vocabulary

# --- synthetic shapes -------------------------------------------------------------------


def test_shapes_captions_name_the_drawn_colour_and_shape(tmp_path):
    colours, shapes = shape_vocabulary()
    assert len(colours) == 6 and len(shapes) == 4
    out = make_shapes(tmp_path, 24, image_size=48)
    seen = set()
    for txt in sorted(out.glob("*.txt")):
        caption = txt.read_text().strip()
        words = caption.rstrip(".").split()
        (colour,) = [w for w in words if w in colours]
        (shape,) = [w for w in words if w in shapes]
        assert caption.endswith("on a white background.")
        seen.add((colour, shape))
        im = Image.open(txt.with_suffix(".png"))
        assert im.size == (48, 48) and im.mode == "RGB"
        # the centre of every shape is filled with its colour; the corners are near-white
        w, h = im.size
        assert im.getpixel((w // 2, h // 2)) == COLOURS[colour]
        assert min(im.getpixel((0, 0))) >= 235
    assert len(seen) == 24  # 24 consecutive images cover every colour/shape pair once


def test_shapes_are_deterministic_per_seed(tmp_path):
    a = make_shapes(tmp_path / "a", 5, seed=3)
    b = make_shapes(tmp_path / "b", 5, seed=3)
    c = make_shapes(tmp_path / "c", 5, seed=4)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and len(files) == 10
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.endswith(".png"))


def test_shapes_reject_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        make_shapes(tmp_path, 2, layout="parquet")
    with pytest.raises(ValueError):
        make_shapes(tmp_path, 2, captions_per_image=0)


# --- every layout reads back the same -----------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_reads_back_with_all_captions(tmp_path, layout):
    path = make_shapes(tmp_path / "set", 7, layout=layout, captions_per_image=3)
    reference = {
        p.with_suffix(".png").name: p.read_text().splitlines()
        for p in make_shapes(tmp_path / "ref", 7, captions_per_image=3).glob("*.txt")
    }
    assert detect_format(path) == layout
    items = read_dataset(path)
    assert len(items) == 7 and all(isinstance(it, Item) for it in items)
    assert len({it.id for it in items}) == 7
    for it in items:
        assert Path(it.image).is_absolute() and Path(it.image).is_file()
        assert it.captions == reference[Path(it.image).name]
        assert len(it.captions) == 3
        assert it.to_record() == {"id": it.id, "image": it.image, "captions": it.captions}


def test_format_can_be_forced(tmp_path):
    path = make_shapes(tmp_path, 2, layout="csv")
    forced = path.rename(tmp_path / "captions.txt")
    with pytest.raises(DatasetError, match="--format"):
        detect_format(forced)
    assert len(read_dataset(forced, "csv")) == 2
    with pytest.raises(DatasetError, match="unknown data set format"):
        read_dataset(forced, "parquet")


# --- COCO -----------------------------------------------------------------------------------


def _coco(path: Path, images, annotations) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_official_layout_finds_the_image_folder(tmp_path):
    # annotations/captions_val2014.json + val2014/ next to annotations/, as downloaded
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "COCO_val2014_1.jpg").write_bytes(b"x")
    ann = _coco(
        tmp_path / "annotations" / "captions_val2014.json",
        [{"id": 1, "file_name": "COCO_val2014_1.jpg"}, {"id": 2, "file_name": "nocap.jpg"}],
        [
            {"id": 10, "image_id": 1, "caption": " A dog. "},
            {"id": 11, "image_id": 1, "caption": "A brown dog."},
        ],
    )
    items = read_dataset(ann)
    assert items == [
        Item("1", str(tmp_path / "val2014" / "COCO_val2014_1.jpg"), ["A dog.", "A brown dog."])
    ]
    other = read_dataset(ann, image_root=tmp_path / "elsewhere")
    assert other[0].image == str(tmp_path / "elsewhere" / "COCO_val2014_1.jpg")


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"images": [{"file_name": "a.jpg"}], "annotations": []}, "images\\[0\\]"),
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]},
            "annotations\\[0\\]",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 9, "caption": "x"}],
            },
            "unknown image_id 9",
        ),
        ({"images": {}, "annotations": []}, "must both be lists"),
    ],
)
def test_coco_bad_files(tmp_path, doc, message):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=message) as e:
        read_dataset(path, "coco")
    assert e.value.code == "invalid_dataset"


def test_not_json_and_unknown_json(tmp_path):
    bad = tmp_path / "captions.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_dataset(bad)
    bad.write_text(json.dumps({"something": "else"}))
    with pytest.raises(DatasetError, match="neither COCO"):
        read_dataset(bad)
    with pytest.raises(DatasetError, match="no data set"):
        read_dataset(tmp_path / "missing.json")


# --- Karpathy -----------------------------------------------------------------------------


def _karpathy(path: Path) -> Path:
    def image(i, split):
        return {
            "filepath": "val2014" if split != "train" else "train2014",
            "filename": f"img{i}.jpg",
            "split": split,
            "cocoid": 100 + i,
            "sentences": [{"raw": f"caption {i} a"}, {"raw": f"caption {i} b"}],
        }

    splits = ["train", "restval", "val", "test", "train"]
    path.write_text(
        json.dumps({"dataset": "coco", "images": [image(i, s) for i, s in enumerate(splits)]})
    )
    return path


def test_karpathy_splits_and_paths(tmp_path):
    path = _karpathy(tmp_path / "dataset_coco.json")
    assert detect_format(path) == "karpathy"
    everything = read_dataset(path, image_root=tmp_path / "coco")
    assert [it.id for it in everything] == ["100", "101", "102", "103", "104"]
    assert everything[0].image == str(tmp_path / "coco" / "train2014" / "img0.jpg")
    assert everything[2].captions == ["caption 2 a", "caption 2 b"]
    train = read_dataset(path, split="train")
    assert [it.id for it in train] == ["100", "101", "104"]  # restval is training data
    assert [it.id for it in read_karpathy(path, split="val")] == ["102"]
    assert [it.id for it in read_karpathy(path, split="restval")] == ["101"]
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        read_dataset(path, split="dev")


def test_split_only_applies_to_karpathy(tmp_path):
    path = make_shapes(tmp_path, 2, layout="coco")
    with pytest.raises(DatasetError, match="--split"):
        read_dataset(path, split="train")


def test_karpathy_bad_entries(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [{"filename": "a.jpg", "sentences": [{"tokens": []}]}]}))
    with pytest.raises(DatasetError, match="'raw'"):
        read_dataset(path)
    path.write_text(json.dumps({"images": [{"sentences": []}]}))
    with pytest.raises(DatasetError, match="filename"):
        read_dataset(path, "karpathy")


# --- CSV / JSONL -----------------------------------------------------------------------------


def test_csv_groups_rows_and_takes_column_names(tmp_path):
    path = tmp_path / "data" / "pairs.tsv"
    path.parent.mkdir()
    path.write_text(
        "file\ttext\textra\n"
        "a.png\tfirst a\t1\n"
        "b.png\tonly b\t2\n"
        "a.png\tsecond a\t3\n"
        "/abs/c.png\tc\t4\n"
    )
    items = read_dataset(path, image_column="file", caption_column="text")
    assert [(Path(it.image).name, it.captions) for it in items] == [
        ("a.png", ["first a", "second a"]),
        ("b.png", ["only b"]),
        ("c.png", ["c"]),
    ]
    assert items[0].image == str(tmp_path / "data" / "a.png")
    assert items[2].image == "/abs/c.png"
    with pytest.raises(DatasetError, match="no column 'image'") as e:
        read_dataset(path)
    assert "file, text, extra" in str(e.value)


def test_csv_row_without_image(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("image,caption\na.png,hello\n,orphan caption\n")
    with pytest.raises(DatasetError, match="line 3: no image path"):
        read_dataset(path)
    path.write_text("")
    with pytest.raises(DatasetError, match="empty file"):
        read_dataset(path)


def test_jsonl_lists_blank_lines_and_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    rows = [
        {"image": "a.png", "caption": ["one", "two"]},
        {"image": "b.png", "caption": "three"},
        {"image": "a.png", "caption": "four"},
    ]
    path.write_text(
        "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n"
    )
    items = read_dataset(path)
    assert [it.captions for it in items] == [["one", "two", "four"], ["three"]]
    path.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(DatasetError, match="line 2: not valid JSON"):
        read_dataset(path)
    path.write_text(json.dumps({"image": "a.png", "caption": 5}) + "\n")
    with pytest.raises(DatasetError, match="line 1: 'caption' must be text"):
        read_dataset(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(DatasetError, match="line 1: expected a JSON object"):
        read_dataset(path)


# --- folder ---------------------------------------------------------------------------------


def test_folder_recursive_and_uncaptioned_images_left_out(tmp_path, make_png):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.jpg").write_bytes(make_png())
    (tmp_path / "sub" / "x.txt").write_text("line one\n\n  line two  \n")
    (tmp_path / "a.png").write_bytes(make_png())
    (tmp_path / "a.txt").write_text("just a\n")
    (tmp_path / "lonely.png").write_bytes(make_png())  # no caption file
    (tmp_path / "empty.png").write_bytes(make_png())
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "notes.txt").write_text("not an image's captions\n")
    (tmp_path / "modern.avif").write_bytes(make_png())  # read by content, found by name
    (tmp_path / "modern.txt").write_text("an avif\n")
    items = read_folder(tmp_path)
    assert [(it.id, it.captions) for it in items] == [
        ("a", ["just a"]),
        ("modern", ["an avif"]),
        ("sub/x", ["line one", "line two"]),
    ]
    assert items[2].image == str(tmp_path / "sub" / "x.jpg")


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="no captioned images"):
        read_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not apply"):
        read_dataset(tmp_path, image_root=tmp_path)
