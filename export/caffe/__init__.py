"""Caffe interop: read Caffe models (prototxt V0/V1/V2, caffemodel) into runs, and write runs as Caffe models.

`import_caffe` (prototxt + caffemodel -> run directory) and `export_caffe` (run -> deploy.prototxt +
weights.caffemodel for stock BVLC Caffe). No Caffe and no protoc are needed: the file format is read with the
protobuf package from the schema in `schema.py`.
"""

from sppnet.export.caffe.caffemodel import Blob, CaffeModel, read_blobproto, read_caffemodel, write_caffemodel
from sppnet.export.caffe.exporter import caffe_net, export_caffe
from sppnet.export.caffe.importer import import_caffe, read_mean
from sppnet.export.caffe.mapping import Mapped, map_net
from sppnet.export.caffe.netdef import NetDef, netdef_from_text, read_netdef
from sppnet.export.caffe.prototxt import PrototxtError, parse_prototxt

__all__ = [
    "Blob",
    "CaffeModel",
    "Mapped",
    "NetDef",
    "PrototxtError",
    "caffe_net",
    "export_caffe",
    "import_caffe",
    "map_net",
    "netdef_from_text",
    "parse_prototxt",
    "read_blobproto",
    "read_caffemodel",
    "read_mean",
    "read_netdef",
    "write_caffemodel",
]
