"""VOC detection XML: 1-based pixels become 0-based boxes; bad files raise one-line errors, bad objects warn."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from sppnet.reproduce.detection.voc import (
    VOC_CLASSES,
    DetImage,
    load_voc_detection,
    parse_annotation,
    write_annotation,
)

DOG = VOC_CLASSES.index("dog") + 1  # 12: labels are 1-based, 0 is background
PERSON = VOC_CLASSES.index("person") + 1  # 15


def _object(name: str, xmin: str, ymin: str, xmax: str, ymax: str, difficult: str = "0") -> str:
    return (
        f"<object><name>{name}</name><pose>Left</pose><truncated>1</truncated><difficult>{difficult}</difficult>"
        f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def _annotation(objects: str, size: str = "<size><width>353</width><height>500</height><depth>3</depth></size>") -> str:
    return f"<annotation><folder>VOC2007</folder><filename>000001.jpg</filename>{size}{objects}</annotation>"


# VOC 2007 trainval 000001.xml, abridged: a 353x500 image with a dog and a person (1-based pixel coordinates).
GOOD = _annotation(_object("dog", "48", "240", "195", "371") + _object("person", "8", "12", "352", "498", "1"))


def _write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _single_line_error(path: Path) -> str:
    with pytest.raises(ValueError) as caught:
        parse_annotation(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_good_file_converts_one_based_pixels(tmp_path: Path) -> None:
    path = _write(tmp_path / "Annotations", "000001.xml", GOOD)
    image, warnings = parse_annotation(path)
    assert warnings == []
    assert image.image_id == "000001"
    assert image.path == tmp_path / "JPEGImages" / "000001.jpg"
    assert (image.width, image.height) == (353, 500)
    # Every coordinate minus 1: (48, 240, 195, 371) -> (47, 239, 194, 370), (8, 12, 352, 498) -> (7, 11, 351, 497).
    np.testing.assert_array_equal(image.boxes, [[47, 239, 194, 370], [7, 11, 351, 497]])
    assert image.boxes.dtype == np.float64
    np.testing.assert_array_equal(image.labels, [DOG, PERSON])
    np.testing.assert_array_equal(image.difficult, [False, True])
    assert len(image) == 2
    with pytest.raises(ValueError, match="read-only"):
        image.boxes[0, 0] = 0.0


def test_a_full_image_box_is_zero_to_size_minus_one(tmp_path: Path) -> None:
    # 1-based (1, 1, 353, 500) covers the whole 353x500 image: 0-based (0, 0, 352, 499), nothing clipped.
    path = _write(tmp_path, "a.xml", _annotation(_object("dog", "1", "1", "353", "500")))
    image, warnings = parse_annotation(path)
    assert warnings == []
    np.testing.assert_array_equal(image.boxes, [[0, 0, 352, 499]])


def test_an_image_without_objects(tmp_path: Path) -> None:
    image, warnings = parse_annotation(_write(tmp_path, "empty.xml", _annotation("")))
    assert warnings == []
    assert image.boxes.shape == (0, 4)
    assert image.labels.shape == image.difficult.shape == (0,)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (_annotation(_object("dog", "1", "1", "5", "5"), size=""), r"<size><width> is missing"),
        (_annotation("", size="<size><width>353</width></size>"), r"<size><height> is missing"),
        (_annotation("", size="<size><width>wide</width><height>5</height></size>"), r"<width> is 'wide'"),
        (_annotation("", size="<size><width>0</width><height>5</height></size>"), r"<width> is '0'"),
        ("this is not XML at all", "not well-formed XML"),
        (GOOD[: len(GOOD) // 2], "not well-formed XML"),  # truncated mid-file
        ("", "not well-formed XML"),
        (b"<annotation>\xff\xfe</annotation>", "not well-formed XML"),  # invalid UTF-8
        ("<html><body/></html>", "root element is <html>"),
    ],
)
def test_unusable_files_raise_one_line_errors(tmp_path: Path, text: str | bytes, problem: str) -> None:
    message = _single_line_error(_write(tmp_path, "bad.xml", text))
    assert re.search(problem, message), message


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<annotation><filename>&lol9;</filename><size><width>5</width><height>5</height></size></annotation>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><filename>&secret;</filename><size><width>5</width><height>5</height></size></annotation>
"""
EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE annotation SYSTEM "http://example.invalid/voc.dtd">
<annotation><size><width>5</width><height>5</height></size></annotation>
"""


@pytest.mark.parametrize("text", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD], ids=["laughs", "entity", "dtd"])
def test_hostile_files_are_refused(tmp_path: Path, text: str) -> None:
    message = _single_line_error(_write(tmp_path, "hostile.xml", text))
    assert "refused for safety" in message


def test_bad_objects_are_dropped_or_clipped_and_reported(tmp_path: Path) -> None:
    objects = [
        _object("dog", "10", "20", "30", "40"),  # 1: fine -> (9, 19, 29, 39)
        _object("unicorn", "1", "1", "5", "5"),  # 2: unknown class: dropped
        _object("dog", "1", "1", "", "5"),  # 3: empty xmax: dropped
        _object("dog", "1", "1", "12px", "5"),  # 4: non-numeric: dropped
        _object("dog", "30", "1", "10", "5"),  # 5: xmax < xmin: dropped
        _object("dog", "400", "1", "420", "5"),  # 6: wholly right of the 353-wide image: dropped
        _object("dog", "0", "-4", "400", "20"),  # 7: partly outside: (-1, -5, 399, 19) clipped to (0, 0, 352, 19)
        _object("dog", "1", "1", "5", "5", difficult="yes"),  # 8: difficult neither 0 nor 1: dropped
        _object("person", "1", "1", "1", "1", difficult="1"),  # 9: a one-pixel difficult box -> (0, 0, 0, 0)
        "<object><name>dog</name></object>",  # 10: no <bndbox>: dropped
    ]
    path = _write(tmp_path, "mixed.xml", _annotation("".join(objects)))
    image, warnings = parse_annotation(path)
    np.testing.assert_array_equal(image.boxes, [[9, 19, 29, 39], [0, 0, 352, 19], [0, 0, 0, 0]])
    np.testing.assert_array_equal(image.labels, [DOG, DOG, PERSON])
    np.testing.assert_array_equal(image.difficult, [False, False, True])
    assert len(warnings) == 8
    assert all("\n" not in warning and str(path) in warning for warning in warnings)
    by_object = {int(warning.split("object ")[1].split()[0].rstrip(":")): warning for warning in warnings}
    assert sorted(by_object) == [2, 3, 4, 5, 6, 7, 8, 10]
    assert "'unicorn'" in by_object[2]
    assert "numeric" in by_object[3] and "numeric" in by_object[4] and "numeric" in by_object[10]
    assert "xmax < xmin" in by_object[5]
    assert "wholly outside" in by_object[6]
    assert "clipped" in by_object[7]
    assert "difficult" in by_object[8]


def test_only_the_given_classes_are_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.xml", GOOD)
    image, warnings = parse_annotation(path, classes=("person", "dog"))
    # person is label 1 and dog label 2 in this class list.
    np.testing.assert_array_equal(image.labels, [2, 1])
    image, warnings = parse_annotation(path, classes=("person",))
    np.testing.assert_array_equal(image.labels, [1])
    assert len(warnings) == 1 and "'dog'" in warnings[0]


def test_write_then_parse_round_trips(tmp_path: Path) -> None:
    boxes = np.array([[0.0, 0.0, 352.0, 499.0], [10.0, 20.5, 30.25, 40.0]])
    path = tmp_path / "Annotations" / "000042.xml"
    path.parent.mkdir()
    write_annotation(path, "000042", "000042.png", 353, 500, boxes, [DOG, PERSON], [False, True])
    text = path.read_text()
    # 1-based on disk: 0 -> 1, 352 -> 353, 20.5 -> 21.5.
    assert "<xmin>1</xmin>" in text and "<xmax>353</xmax>" in text and "<ymin>21.5</ymin>" in text
    image, warnings = parse_annotation(path)
    assert warnings == []
    assert image.image_id == "000042"
    assert image.path == tmp_path / "JPEGImages" / "000042.png"
    assert (image.width, image.height) == (353, 500)
    np.testing.assert_array_equal(image.boxes, boxes)
    np.testing.assert_array_equal(image.labels, [DOG, PERSON])
    np.testing.assert_array_equal(image.difficult, [False, True])
    assert [p.name for p in tmp_path.joinpath("Annotations").iterdir()] == ["000042.xml"]  # no temporary left


def test_write_refuses_what_it_could_not_read_back(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must be named 7\.xml"):
        write_annotation(tmp_path / "8.xml", "7", "7.jpg", 10, 10, [[0, 0, 1, 1]], [1], [False])
    with pytest.raises(ValueError, match="not a valid box inside the 10x10 image"):
        write_annotation(tmp_path / "7.xml", "7", "7.jpg", 10, 10, [[0, 0, 10, 1]], [1], [False])
    with pytest.raises(ValueError, match=r"label 0 is not in 1\.\.20"):
        write_annotation(tmp_path / "7.xml", "7", "7.jpg", 10, 10, [[0, 0, 1, 1]], [0], [False])
    assert not any(tmp_path.iterdir())


def test_det_image_checks_its_arrays() -> None:
    with pytest.raises(ValueError, match="one label and one flag per box"):
        DetImage("x", Path("x.jpg"), 5, 5, np.zeros((2, 4)), np.ones(1), np.zeros(2))


def _devkit(root: Path) -> Path:
    """A VOCdevkit with five listed ids: two usable, one without annotation, one garbage, one without image."""
    voc = root / "VOCdevkit" / "VOC2007"
    _write(voc / "ImageSets" / "Main", "test.txt", "000001\n000002\n000003\n000004\n000005\n\n")
    _write(voc / "Annotations", "000001.xml", GOOD)
    _write(voc / "Annotations", "000002.xml", _annotation(_object("unicorn", "1", "1", "5", "5")))
    _write(voc / "Annotations", "000004.xml", "<annotation><size>")
    _write(voc / "Annotations", "000005.xml", _annotation(""))
    _write(voc / "JPEGImages", "000001.jpg", b"")
    _write(voc / "JPEGImages", "000002.png", b"")
    _write(voc / "JPEGImages", "000003.jpg", b"")
    _write(voc / "JPEGImages", "000004.jpg", b"")
    return voc


def test_load_reports_and_skips_unusable_images(tmp_path: Path) -> None:
    voc = _devkit(tmp_path)
    for root in (tmp_path / "VOCdevkit", voc):  # the devkit or its VOC2007 folder
        images, problems = load_voc_detection(root, "test")
        assert [image.image_id for image in images] == ["000001", "000002"]
        assert images[0].path == voc / "JPEGImages" / "000001.jpg"
        assert images[1].path == voc / "JPEGImages" / "000002.png"  # the .png, since no .jpg exists
        np.testing.assert_array_equal(images[0].labels, [DOG, PERSON])
        assert images[1].boxes.shape == (0, 4)  # its one object has an unknown class
        assert len(problems) == 4 and all("\n" not in problem for problem in problems)
        unicorn, missing, garbage, no_image = problems
        assert "000002.xml" in unicorn and "'unicorn'" in unicorn
        assert "000003.xml" in missing and "not found" in missing and "skipped" in missing
        assert "000004.xml" in garbage and "not well-formed" in garbage and "skipped" in garbage
        assert "000005" in no_image and "skipped" in no_image


def test_load_needs_the_devkit_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ImageSets"):
        load_voc_detection(tmp_path, "test")
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"test\.txt not found"):
        load_voc_detection(tmp_path, "test")
