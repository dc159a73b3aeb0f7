"""Datasets: determinism, captions agree with attributes, held-out splits, user folders."""
import hashlib
import json
import warnings

import pytest
import torch
from PIL import Image

from dalle_mini_impl.datasets import (COLOUR_NAMES, COLOURS, DEFAULT_HOLDOUT, SHAPES, CocoCaptionsDataset,
                                      DigitsDataset, FolderDataset, ShapesDataset, canonical,
                                      caption_from_attributes, collate, load_dataset, parse_caption)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


# ------------------------------------------------------------------ shapes
def test_shapes_same_seed_same_bytes():
    a = ShapesDataset(500, seed=7, n_objects=(1, 2))
    b = ShapesDataset(500, seed=7, n_objects=(1, 2))
    assert digest(a.images) == digest(b.images)
    assert a.captions == b.captions and a.attributes == b.attributes
    c = ShapesDataset(500, seed=8, n_objects=(1, 2))
    assert digest(a.images) != digest(c.images)


def test_shapes_item_and_sizes():
    for size in (32, 64):
        ds = ShapesDataset(10, image_size=size, seed=0)
        img, cap, attrs = ds[3]
        assert img.shape == (3, size, size) and img.dtype == torch.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.max() > 0.5  # something drawn
        assert isinstance(cap, str) and set(attrs) == {"objects", "relation"}


@pytest.mark.parametrize("n_objects", [1, 2, (1, 2)])
def test_captions_agree_with_attributes(n_objects):
    ds = ShapesDataset(600, seed=3, n_objects=n_objects)
    phrasings = set()
    for cap, attrs in zip(ds.captions, ds.attributes):
        assert canonical(parse_caption(cap)) == canonical(attrs), cap
        for obj in attrs["objects"]:
            assert obj["shape"] in cap and obj["colour"] in cap and obj["size"] in cap
        phrasings.add(cap.split(" ")[0] + cap.split(" ")[1])
    assert len(phrasings) >= 2  # several phrasings are in use


def test_attributes_agree_with_pixels():
    """The drawn colour at the object's position is the captioned colour."""
    ds = ShapesDataset(200, seed=5, n_objects=1)
    centre = {"left": (16, 8.6), "right": (16, 23.4), "top": (8.6, 16), "bottom": (23.4, 16),
              "centre": (16, 16)}
    hits = 0
    for img, attrs in zip(ds.images, ds.attributes):
        obj = attrs["objects"][0]
        y, x = centre[obj["position"]]
        patch = img[:, int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].float().mean((1, 2))
        hits += torch.allclose(patch, torch.tensor(COLOURS[obj["colour"]], dtype=torch.float32), atol=40)
    assert hits >= 190  # triangles' centroids sit near their edge at small sizes


def test_holdout_never_in_train_and_always_in_holdout():
    held = {tuple(h) for h in DEFAULT_HOLDOUT}
    train = ShapesDataset(3000, seed=11, split="train", n_objects=(1, 2))
    for attrs in train.attributes:
        for o in attrs["objects"]:
            assert (o["colour"], o["shape"]) not in held
    test = ShapesDataset(1000, seed=12, split="holdout", n_objects=(1, 2))
    for attrs in test.attributes:
        assert any((o["colour"], o["shape"]) in held for o in attrs["objects"])
    # every held-out pair is represented, and every colour and shape is still in training
    seen = {(o["colour"], o["shape"]) for a in test.attributes for o in a["objects"]}
    assert held <= seen
    train_colours = {o["colour"] for a in train.attributes for o in a["objects"]}
    train_shapes = {o["shape"] for a in train.attributes for o in a["objects"]}
    assert train_colours == set(COLOUR_NAMES) and train_shapes == set(SHAPES)


def test_two_objects_are_distinguishable():
    ds = ShapesDataset(2000, seed=1, n_objects=2)
    for a in ds.attributes:
        o1, o2 = a["objects"]
        assert (o1["colour"], o1["shape"]) != (o2["colour"], o2["shape"])
        assert a["relation"] in ("left of", "right of", "above", "below")


def test_caption_round_trip_every_template():
    attrs = {"objects": [{"shape": "square", "colour": "blue", "size": "small", "position": "left"},
                         {"shape": "triangle", "colour": "green", "size": "large", "position": "right"}],
             "relation": "left of"}
    for v in range(3):
        assert canonical(parse_caption(caption_from_attributes(attrs, v))) == canonical(attrs)
    assert caption_from_attributes(attrs, 0) == "a small blue square to the left of a large green triangle"


def test_shapes_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(10, split="validation")
    with pytest.raises(ValueError, match="n_objects"):
        ShapesDataset(10, n_objects=3)
    with pytest.raises(ValueError, match="held-out pair"):
        ShapesDataset(10, holdout=[("pink", "circle")])


# ------------------------------------------------------------------ digits
def test_digits_deterministic_and_captioned():
    a, b = DigitsDataset("train", image_size=16), DigitsDataset("train", image_size=16)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    test = DigitsDataset("test", image_size=16)
    assert len(a) + len(test) == 1797
    img, cap, attrs = test[0]
    assert img.shape == (1, 16, 16)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for cap, d in zip(test.captions, test.labels.tolist()):
        assert str(d) in cap or words[d] in cap
    assert DigitsDataset("test", channels=3)[0][0].shape == (3, 32, 32)


# ------------------------------------------------------------------ folders
def _write_png(path, colour=(255, 0, 0), size=(20, 12)):
    Image.new("RGB", size, colour).save(path)


def test_folder_good_and_every_bad_case(tmp_path):
    _write_png(tmp_path / "good1.png")
    (tmp_path / "good1.txt").write_text("a red rectangle\n")
    _write_png(tmp_path / "good2.jpg", (0, 0, 255))
    (tmp_path / "good2.txt").write_text("a blue one\nanother caption\n")
    _write_png(tmp_path / "nocaption.png")  # no .txt
    _write_png(tmp_path / "emptycap.png")
    (tmp_path / "emptycap.txt").write_text("   \n")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "zero.txt").write_text("zero bytes")
    (tmp_path / "fake.png").write_bytes(b"this is not an image at all")
    (tmp_path / "fake.txt").write_text("fake")
    _write_png(tmp_path / "full.png", size=(64, 64))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "trunc.txt").write_text("truncated")
    (tmp_path / "notes.csv").write_text("not an image")
    with pytest.warns(UserWarning) as record:
        ds = FolderDataset(tmp_path, image_size=16)
    assert len(ds) == 3  # good1 + two captions of good2
    assert sorted(ds.captions) == ["a blue one", "a red rectangle", "another caption"]
    reasons = {p.name: why for p, why in ds.skipped}
    assert set(reasons) >= {"nocaption.png", "emptycap.png", "zero.png", "fake.png", "trunc.png",
                            "notes.csv", "full.png"}
    assert len(record) == 1  # one warning that counts everything
    text = str(record[0].message)
    assert "skipped 7 unusable" in text and "notes.csv" in text and "nocaption.png" in text
    img, cap, attrs = ds[0]
    assert img.shape == (3, 16, 16) and 0 <= img.min() <= img.max() <= 1


def test_folder_with_nothing_usable_names_the_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=str(tmp_path)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FolderDataset(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        FolderDataset(tmp_path / "missing")


def test_coco_captions(tmp_path):
    _write_png(tmp_path / "x.png")
    _write_png(tmp_path / "broken.png", size=(4, 4))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    spec = {"images": [{"id": 1, "file_name": "x.png"}, {"id": 2, "file_name": "broken.png"},
                       {"id": 3, "file_name": "lonely.png"}],
            "annotations": [{"image_id": 1, "caption": "first"}, {"image_id": 1, "caption": "second"},
                            {"image_id": 2, "caption": "bad image"}, {"image_id": 1, "caption": ""}]}
    (tmp_path / "caps.json").write_text(json.dumps(spec))
    with pytest.warns(UserWarning, match="skipped 3"):
        ds = CocoCaptionsDataset(tmp_path / "caps.json", image_size=8)
    assert ds.captions == ["first", "second"]
    (tmp_path / "bad.json").write_text('{"images": 3}')
    with pytest.raises(ValueError, match="COCO-style"):
        CocoCaptionsDataset(tmp_path / "bad.json")


def test_shipped_sample_folder_and_load_dataset():
    ds = load_dataset("folder:data/sample_folder", image_size=32)
    assert len(ds) == 6 and ds.images.shape == (6, 3, 32, 32)
    coco = load_dataset("coco:data/sample_coco/captions.json", image_size=32)
    assert len(coco) == 4
    assert isinstance(load_dataset("shapes", n=5), ShapesDataset)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("folder:")
    with pytest.raises(TypeError):
        load_dataset(3)


def test_collate_for_dataloader():
    ds = ShapesDataset(8, seed=0, n_objects=(1, 2))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    images, captions, attrs = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and len(captions) == 4 and len(attrs) == 4


# ------------------------------------------------------------------ decoding that is right, not just readable
def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 10))  # blue left half, red right half, stored sideways:
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    (tmp_path / "phone.txt").write_text("a photo")
    ds = FolderDataset(tmp_path, image_size=8)
    x = ds.images[0].float()  # (3, 8, 8), displayed upright: blue on top, red below
    assert x[2, :3].mean() > 200 and x[0, -3:].mean() > 200


def test_16_bit_float_and_transparent_images_are_scaled_not_clipped(tmp_path):
    import numpy as np
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(tmp_path / "mid16.png")
    Image.fromarray(np.full((16, 16), 0.25, dtype=np.float32), mode="F").save(tmp_path / "quarter.tif")
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(tmp_path / "clear.png")  # fully transparent red
    for name in ("mid16", "quarter", "clear"):
        (tmp_path / f"{name}.txt").write_text(name)
    ds = FolderDataset(tmp_path, image_size=16)
    got = {cap: ds.images[i].float().mean().item() for i, cap in enumerate(ds.captions)}
    assert abs(got["mid16"] - 128) <= 1 and abs(got["quarter"] - 64) <= 1
    assert got["clear"] == 255  # composited onto white, the default
    black = FolderDataset(tmp_path, image_size=16, background="black")
    assert black.images[black.captions.index("clear")].max() == 0
    with pytest.raises(ValueError, match="background"):
        FolderDataset(tmp_path, image_size=16, background="pink")


def test_non_utf8_captions_are_counted(tmp_path):
    _write_png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.warns(UserWarning, match="1 caption.*not valid UTF-8"):
        ds = FolderDataset(tmp_path, image_size=8)
    assert ds.captions == ["caf\ufffd au lait"]


def _coco(tmp_path, images, annotations):
    _write_png(tmp_path / "a.png")
    _write_png(tmp_path / "b.png", (0, 255, 0))
    path = tmp_path / "caps.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_refuses_what_would_pair_captions_wrongly(tmp_path):
    dup = _coco(tmp_path, [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}],
                [{"image_id": 1, "caption": "x"}])
    with pytest.raises(ValueError, match="image id 1 is listed twice"):
        CocoCaptionsDataset(dup)
    for images, anns, what in (([{"id": 1, "file_name": None}], [], "images\\[0\\]"),
                               ([{"id": 1, "file_name": "a.png"}], ["a caption"], "annotations\\[0\\]"),
                               ({"id": 1}, [], "COCO-style")):
        with pytest.raises(ValueError, match=what):
            CocoCaptionsDataset(_coco(tmp_path, images, anns))


def test_coco_counts_orphans_and_bad_text_in_one_warning(tmp_path):
    path = _coco(tmp_path, [{"id": 1, "file_name": "a.png"}],
                 [{"image_id": 1, "caption": "fine"}, {"image_id": 1, "caption": "odd \ud800 text"},
                  {"image_id": 7, "caption": "no such image"}])
    with pytest.warns(UserWarning) as record:
        ds = CocoCaptionsDataset(path, image_size=8)
    assert len(record) == 1
    assert "1 caption(s) of image ids not in 'images'" in str(record[0].message)
    assert "not valid UTF-8" in str(record[0].message)
    assert len(ds) == 2 and all(c.encode("utf-8") for c in ds.captions)
