"""PASCAL VOC detection annotations: parse and write devkit XML, and load a VOC 2007 detection split.

VOC XML stores 1-based pixel coordinates with the right/bottom pixel included; a `DetImage` holds them 0-based
(x1, y1, x2, y2) as the rest of `sppnet.reproduce.detection` does. XML is parsed with defusedxml, refusing DTDs,
entity declarations and external references, so a hostile file cannot expand entities or read other files.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET
import numpy as np
from numpy.typing import ArrayLike

from sppnet.core.atomic import write_atomic
from sppnet.core.errors import BadData
from sppnet.reproduce.datasets import VOC_CLASSES, _read_lines, _voc2007_dir
from sppnet.reproduce.detection.boxes import as_boxes, valid_boxes

__all__ = ["VOC_CLASSES", "DetImage", "load_voc_detection", "parse_annotation", "write_annotation"]

_IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".png")
_FIX_FILE = "restore it from the VOC devkit or regenerate the dataset"


@dataclass(frozen=True, eq=False)
class DetImage:
    """One image's ground truth: (K, 4) 0-based inclusive boxes, labels 1..C (0 is background), difficult flags.

    The arrays are read-only float64 / int64 / bool copies; `eq=False` because arrays have no single truth value.
    """

    image_id: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray

    def __post_init__(self) -> None:
        boxes = np.array(as_boxes(self.boxes, f"DetImage {self.image_id} boxes"), dtype=np.float64)
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        difficult = np.array(self.difficult, dtype=bool).reshape(-1)
        if not (boxes.shape[0] == labels.shape[0] == difficult.shape[0]):
            raise BadData(
                f"DetImage {self.image_id}: {boxes.shape[0]} boxes, {labels.shape[0]} labels and "
                f"{difficult.shape[0]} difficult flags; pass one label and one flag per box"
            )
        if self.width < 1 or self.height < 1:
            raise BadData(f"DetImage {self.image_id}: size {self.width}x{self.height}; both must be >= 1")
        for array in (boxes, labels, difficult):
            array.setflags(write=False)
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "difficult", difficult)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def parse_annotation(path: str | os.PathLike[str], classes: Sequence[str] = VOC_CLASSES) -> tuple[DetImage, list[str]]:
    """Read one VOC annotation XML into a `DetImage` (id = the file's stem) and the problems found, one line each.

    Object-level problems never raise: an object with an unknown class, a missing or non-numeric coordinate, a
    non-finite or degenerate box (x2 < x1 or y2 < y1) or a box wholly outside the image is dropped, a box partly
    outside is clipped to the image, and each is reported in the returned list. The image path is
    `<annotation folder>/../JPEGImages/<filename>` (`<id>.jpg` without a plain file name there). Raises a one-line
    ValueError naming the file, the problem and the fix when the file cannot be used at all: unreadable, not XML,
    a DTD, entity or external reference (refused for safety), no <annotation> root, or a missing or bad <size>.
    """
    path = Path(path)
    root = _parse_xml(path)
    if root.tag != "annotation":
        raise BadData(f"VOC annotation {path}: the root element is <{root.tag}>, not <annotation>; {_FIX_FILE}")
    width = _size_field(root, "width", path)
    height = _size_field(root, "height", path)
    class_index = {name: label for label, name in enumerate(classes, start=1)}
    warnings: list[str] = []
    boxes: list[list[float]] = []
    labels: list[int] = []
    difficult: list[bool] = []
    for number, obj in enumerate(root.findall("object"), start=1):
        where = f"{path}: object {number}"
        name = _text(obj, "name")
        if name not in class_index:
            warnings.append(f"{where}: class {name!r} is not one of the {len(class_index)} classes; object skipped")
            continue
        where = f"{where} ({name})"
        flag = _text(obj, "difficult") or "0"
        if flag not in ("0", "1"):
            warnings.append(f"{where}: <difficult> is {flag!r}, not 0 or 1; object skipped")
            continue
        corners = [_text(obj, f"bndbox/{tag}") for tag in ("xmin", "ymin", "xmax", "ymax")]
        try:
            # VOC pixels are 1-based; subtracting 1 gives this package's 0-based indices.
            box = [float(value if value is not None else "missing") - 1.0 for value in corners]
        except ValueError:
            warnings.append(
                f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax; got {corners} (None = missing); "
                "object skipped"
            )
            continue
        shown = "(" + ", ".join(str(value) for value in corners) + ") 1-based"
        if not valid_boxes(np.asarray([box]))[0]:
            warnings.append(f"{where}: box {shown} is not finite or has xmax < xmin or ymax < ymin; object skipped")
            continue
        x1, y1, x2, y2 = box
        if x2 < 0 or y2 < 0 or x1 > width - 1 or y1 > height - 1:
            warnings.append(f"{where}: box {shown} lies wholly outside the {width}x{height} image; object skipped")
            continue
        clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, width - 1.0), min(y2, height - 1.0)]
        if clipped != box:
            warnings.append(f"{where}: box {shown} extends outside the {width}x{height} image; clipped to it")
        boxes.append(clipped)
        labels.append(class_index[name])
        difficult.append(flag == "1")
    filename = _text(root, "filename")
    # Only a plain file name: a <filename> with folders must not point outside JPEGImages.
    if filename is None or filename in (".", "..") or any(sep in filename for sep in "/\\"):
        filename = f"{path.stem}.jpg"
    image = DetImage(
        image_id=path.stem,
        path=path.parent.parent / "JPEGImages" / filename,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
    )
    return image, warnings


def load_voc_detection(
    root: str | os.PathLike[str], split: str, classes: Sequence[str] = VOC_CLASSES
) -> tuple[list[DetImage], list[str]]:
    """The images of `ImageSets/Main/<split>.txt` with their boxes, in list order, and every problem, one line each.

    `root` is `VOCdevkit` or its `VOC2007` folder. Annotations are `Annotations/<id>.xml`, images
    `JPEGImages/<id>.jpg` or `.png` (whichever exists). An image whose annotation is missing or unusable, or whose
    image file is missing, is reported and skipped; object-level problems are reported as `parse_annotation` does.
    Raises ValueError only when the devkit layout or the split file itself is missing or malformed.
    """
    voc = _voc2007_dir(Path(root))
    split_file = voc / "ImageSets" / "Main" / f"{split}.txt"
    ids = [fields[0] for _, fields in _read_lines(split_file, 1, "<image_id>")]
    images: list[DetImage] = []
    problems: list[str] = []
    seen: set[str] = set()
    for image_id in ids:
        if image_id in seen:
            problems.append(f"{split_file}: image id {image_id} is listed twice; later copies skipped")
            continue
        seen.add(image_id)
        annotation = voc / "Annotations" / f"{image_id}.xml"
        if not annotation.is_file():
            problems.append(f"{annotation}: annotation of {image_id} not found; image skipped")
            continue
        try:
            image, warnings = parse_annotation(annotation, classes)
        except ValueError as error:
            problems.append(f"{error} (image skipped)")
            continue
        problems.extend(warnings)
        candidates = [voc / "JPEGImages" / f"{image_id}{suffix}" for suffix in _IMAGE_SUFFIXES]
        found = next((candidate for candidate in candidates if candidate.is_file()), None)
        if found is None:
            problems.append(
                f"{voc / 'JPEGImages'}: no {' or '.join(c.name for c in candidates)} for {image_id}; image skipped"
            )
            continue
        images.append(replace(image, path=found))
    return images, problems


def write_annotation(
    path: str | os.PathLike[str],
    image_id: str,
    filename: str,
    width: int,
    height: int,
    boxes: ArrayLike,
    labels: ArrayLike,
    difficult: ArrayLike,
    classes: Sequence[str] = VOC_CLASSES,
) -> None:
    """Write VOC annotation XML (1-based coordinates) atomically; `parse_annotation` reads back the same image.

    `path` must be `<image_id>.xml` (VOC takes the id from the file name). Boxes are 0-based inclusive, within the
    width x height image; integral coordinates are written as integers, others as the shortest exact decimal.
    """
    path = Path(path)
    if path.name != f"{image_id}.xml":
        raise BadData(f"write_annotation: {path} must be named {image_id}.xml (VOC reads the id from the name)")
    boxes = as_boxes(boxes, "write_annotation boxes")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    difficult = np.asarray(difficult, dtype=bool).reshape(-1)
    if not (boxes.shape[0] == labels.shape[0] == difficult.shape[0]):
        raise BadData(
            f"write_annotation {path}: {boxes.shape[0]} boxes, {labels.shape[0]} labels, {difficult.shape[0]} "
            "difficult flags; pass one label and one flag per box"
        )
    if width < 1 or height < 1:
        raise BadData(f"write_annotation {path}: size {width}x{height}; width and height must be >= 1")
    bad_label = (labels < 1) | (labels > len(classes))
    if bad_label.any():
        raise BadData(
            f"write_annotation {path}: label {int(labels[bad_label][0])} is not in 1..{len(classes)}; "
            "labels are 1-based class numbers (0 is background)"
        )
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= width - 1) & (boxes[:, 3] <= height - 1)
    bad_box = ~(valid_boxes(boxes) & inside)
    if bad_box.any():
        raise BadData(
            f"write_annotation {path}: box {boxes[bad_box][0].tolist()} is not a valid box inside the {width}x{height} "
            "image; boxes are 0-based (x1, y1, x2, y2) with x1 <= x2 <= width - 1 and y1 <= y2 <= height - 1"
        )
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(int(value))
    ET.SubElement(root, "segmented").text = "0"
    for box, label, hard in zip(boxes, labels, difficult, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[int(label) - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if hard else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = _number(float(value) + 1.0)
    ET.indent(root, space="\t")
    write_atomic(path, ET.tostring(root, encoding="utf-8") + b"\n")


def _parse_xml(path: Path) -> ET.Element:
    """The root element of `path`, or a one-line ValueError; DTDs, entities and external references refused."""
    try:
        tree = SafeET.parse(path, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as error:
        raise BadData(
            f"VOC annotation {path}: refused for safety ({type(error).__name__}: a DTD, entity declaration or "
            f"external reference, which VOC annotations never contain); {_FIX_FILE}"
        ) from None
    except ET.ParseError as error:
        raise BadData(f"VOC annotation {path}: not well-formed XML ({error}); {_FIX_FILE}") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise BadData(
            f"VOC annotation {path}: cannot be read ({reason}); check the file and its access rights"
        ) from None
    return tree.getroot()


def _text(element: ET.Element, tag: str) -> str | None:
    """The stripped text of the first `tag` under `element`, or None when absent or empty."""
    found = element.find(tag)
    text = found.text.strip() if found is not None and found.text else ""
    return text or None


def _size_field(root: ET.Element, tag: str, path: Path) -> int:
    text = _text(root, f"size/{tag}")
    try:
        value = float(text if text is not None else "missing")
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value >= 1 and value.is_integer()):
        got = "missing" if text is None else repr(text)
        raise BadData(f"VOC annotation {path}: <size><{tag}> is {got}, expected a positive integer; {_FIX_FILE}")
    return int(value)


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)
