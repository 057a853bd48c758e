"""Segmentation sets as folders of images and masks: layouts, mask modes, and the errors for bad files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vitkit.data.datasets.segmentation_files import MaskFileDataset, load_segmentation_folder
from vitkit.data.decoded import decoded
from vitkit.data.masks import MaskError, read_mask

PALETTE = [0, 0, 0, 200, 30, 30, 30, 200, 30]  # background, cat, dog
# a full 256-colour palette, as VOC's masks have: with fewer entries PIL would renumber index 255
FULL_PALETTE = PALETTE + [0] * (768 - len(PALETTE))


def _mask(rows=8, cols=10):
    mask = np.zeros((rows, cols), dtype=np.uint8)
    mask[2:5, 3:7] = 1
    mask[6:, :2] = 2
    mask[0, 0] = 255  # ignored
    return mask


def _write_set(folder, count=5, *, mode="P", size=(10, 8)):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(count):
        Image.new("RGB", size, (index * 20, 0, 0)).save(folder / "images" / f"img{index}.jpg")
        mask = Image.fromarray(_mask(size[1], size[0]))
        if mode == "P":
            mask.putpalette(FULL_PALETTE)  # an "L" image becomes "P", its values the palette indices
        mask.save(folder / "masks" / f"img{index}.png")
    return folder


def test_palette_masks_are_read_as_indices_and_a_seeded_share_is_held_out(tmp_path):
    root = _write_set(tmp_path / "set", count=10)
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    files = load_segmentation_folder(root, val_fraction=0.2, seed=0)
    assert files.classes.names == ["background", "cat", "dog"]
    assert len(files.train) == 8 and len(files.val) == 2
    assert {p[0].stem for p in files.train + files.val} == {f"img{i}" for i in range(10)}
    assert all(image.stem == mask.stem for image, mask in files.train)
    assert np.array_equal(read_mask(files.train[0][1]), _mask())
    again = load_segmentation_folder(root, val_fraction=0.2, seed=0)
    assert again.val == files.val and load_segmentation_folder(root, val_fraction=0.2, seed=1).val != files.val


def test_train_and_val_folders_are_used_as_they_are_and_classes_come_from_the_masks(tmp_path):
    _write_set(tmp_path / "set" / "train", count=3, mode="L")
    _write_set(tmp_path / "set" / "val", count=2, mode="L")
    files = load_segmentation_folder(tmp_path / "set", val_fraction=0.2, seed=0)
    assert len(files.train) == 3 and len(files.val) == 2
    assert files.classes.names == ["0", "1", "2"]  # no classes file: the indices the masks use


def test_rgb_masks_are_read_through_the_colour_map_of_classes_json(tmp_path):
    root = _write_set(tmp_path / "set", count=2)
    for path in (root / "masks").iterdir():
        Image.open(path).convert("RGB").save(path)
    with pytest.raises(MaskError, match=r"is an RGB image but no colour map says which colour is which class"):
        load_segmentation_folder(root, val_fraction=0.5, seed=0)
    colours = [PALETTE[i : i + 3] for i in range(0, 9, 3)]
    names = ["background", "cat", "dog"]
    entries = [{"name": name, "color": colour} for name, colour in zip(names, colours, strict=True)]
    (root / "classes.json").write_text(json.dumps(entries))
    bad = np.asarray(Image.open(root / "masks" / "img0.png")).copy()
    bad[1, 1] = (1, 2, 3)
    Image.fromarray(bad).save(root / "masks" / "img0.png")
    with pytest.raises(MaskError, match=r"img0.png holds the colour \[1, 2, 3\], which classes.json does not list"):
        load_segmentation_folder(root, val_fraction=0.5, seed=0)
    good = np.zeros((8, 10, 3), dtype=np.uint8)
    good[2:5, 3:7] = colours[1]
    Image.fromarray(good).save(root / "masks" / "img0.png")
    files = load_segmentation_folder(root, val_fraction=0.5, seed=0)
    mask = read_mask(root / "masks" / "img0.png", files.classes)
    assert mask[3, 4] == 1 and mask[0, 0] == 0


def test_bad_pairs_are_refused_naming_the_file(tmp_path):
    root = _write_set(tmp_path / "missing", count=3)
    (root / "masks" / "img1.png").unlink()
    with pytest.raises(MaskError, match=r"image .*img1.jpg has no mask: expected .*img1.png"):
        load_segmentation_folder(root, val_fraction=0.3, seed=0)
    root = _write_set(tmp_path / "size", count=3)
    Image.new("L", (12, 8)).save(root / "masks" / "img2.png")
    with pytest.raises(MaskError, match=r"mask .*img2.png is 12×8 but its image is 10×8"):
        load_segmentation_folder(root, val_fraction=0.3, seed=0)
    root = _write_set(tmp_path / "classes", count=3)
    (root / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(MaskError, match=r"holds class 2 but the set has 2 classes"):
        load_segmentation_folder(root, val_fraction=0.3, seed=0)
    with pytest.raises(MaskError, match=r"is not a segmentation set: expected .*/images and .*/masks"):
        load_segmentation_folder(tmp_path, val_fraction=0.3, seed=0)


def test_more_bad_sets_are_refused_naming_the_file(tmp_path):
    root = _write_set(tmp_path / "twice", count=3)
    (root / "classes.txt").write_text("background\ncat\ncat\n")
    with pytest.raises(MaskError, match=r"classes.txt names 'cat' more than once"):
        load_segmentation_folder(root, val_fraction=0.3, seed=0)
    (root / "classes.txt").write_text("\n".join(f"class{i}" for i in range(256)))
    with pytest.raises(MaskError, match=r"lists 256 classes; a mask holds at most 255"):
        load_segmentation_folder(root, val_fraction=0.3, seed=0)
    root = _write_set(tmp_path / "stems", count=2)
    Image.new("RGB", (10, 8)).save(root / "images" / "img0.png")  # img0.jpg and img0.png: one mask
    with pytest.raises(MaskError, match=r"share the stem of one mask"):
        load_segmentation_folder(root, val_fraction=0.5, seed=0)


def test_another_ignore_index_is_honoured_and_255_is_then_a_class_the_set_lacks(tmp_path):
    root = _write_set(tmp_path / "set", count=3)  # masks hold 0, 1, 2 and one 255
    with pytest.raises(MaskError, match=r"holds class 255 .* set --ignore-index"):
        load_segmentation_folder(root, val_fraction=0.3, seed=0, ignore_index=0)
    assert load_segmentation_folder(root, val_fraction=0.3, seed=0, ignore_index=255).classes.names == ["0", "1", "2"]


def test_a_mask_labels_the_image_as_its_exif_orientation_shows_it(tmp_path):
    root = _write_set(tmp_path / "set", count=2)
    photo = Image.new("RGB", (8, 10))  # stored 8×10, shown turned a quarter: 10×8, the masks' size
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(root / "images" / "img0.jpg", exif=exif)
    files = load_segmentation_folder(root, val_fraction=0.5, seed=0)
    assert len(files.train + files.val) == 2
    Image.new("RGB", (10, 8)).save(root / "images" / "img0.jpg", exif=exif)  # shown 8×10: not the mask's size
    with pytest.raises(MaskError, match=r"img0.png is 10×8 but its image is 8×10"):
        load_segmentation_folder(root, val_fraction=0.5, seed=0)


def test_decoding_once_keeps_each_mask_on_its_image(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_HOME", str(tmp_path / "home"))
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    draw = np.random.default_rng(0)
    for index in range(4):  # wide images: resized and centre-cropped, the masks with them
        mask = np.zeros((30, 52), dtype=np.uint8)
        top, left = 2 * draw.integers(0, 9), 2 * draw.integers(3, 18)  # even: whole pixels at half the size
        mask[top : top + 12, left : left + 12] = 1
        image = np.stack([mask * 250] * 3, axis=-1).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{index}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{index}.png")
    files = load_segmentation_folder(root, val_fraction=0.25, seed=0)
    decoded_set = decoded(MaskFileDataset(files.train, 3, files.classes), 15, progress=False)
    images, masks = decoded_set.images, decoded_set.labels
    assert images.shape == (3, 3, 15, 15) and masks.shape == (3, 15, 15)
    assert torch.equal(images[:, 0] > 125, masks == 1)  # every mask pixel on its image's pixel
