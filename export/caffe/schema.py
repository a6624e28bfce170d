"""The part of caffe.proto sppnet reads and writes, as protobuf descriptors built here (no protoc, no Caffe).

Field numbers and names are BVLC Caffe's (src/caffe/proto/caffe.proto), which are facts of the file format:
`NetParameter` with `layer` (V2, 100) or `layers` (V1, 2; a V0 file nests its `V0LayerParameter` in field 1 of
the same message), `BlobProto` with `shape` or the legacy num/channels/height/width, and the parameter messages of
the layers sppnet maps. Fields sppnet never touches are left out: the protobuf runtime keeps them as unknown
fields when it parses, and they are never written. Everything lives in a private descriptor pool, so a process
that also loads Caffe's own `caffe_pb2` sees no clash.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "sppnet_caffe"
F = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, type name for messages and enums, options)
_Field = tuple[str, int, int, int, str, dict[str, Any]]
OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED
STRING, BOOL, FLOAT, DOUBLE, INT32, UINT32, INT64 = (
    F.TYPE_STRING,
    F.TYPE_BOOL,
    F.TYPE_FLOAT,
    F.TYPE_DOUBLE,
    F.TYPE_INT32,
    F.TYPE_UINT32,
    F.TYPE_INT64,
)
MESSAGE, ENUM = F.TYPE_MESSAGE, F.TYPE_ENUM

# Enums as caffe.proto numbers them.
ENUMS: dict[str, dict[str, int]] = {
    "Phase": {"TRAIN": 0, "TEST": 1},
    "PoolMethod": {"MAX": 0, "AVE": 1, "STOCHASTIC": 2},
    "NormRegion": {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1},
    "V1LayerType": {
        "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3, "CONTRASTIVE_LOSS": 37,
        "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6, "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7,
        "ELTWISE": 25, "EXP": 38, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28,
        "IM2COL": 11, "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
        "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18, "SIGMOID": 19,
        "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22,
        "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31,
    },
}  # fmt: skip


def _f(name: str, number: int, kind: int, label: int = OPT, type_name: str = "", **options: Any) -> _Field:
    return (name, number, kind, label, type_name, options)


def _m(name: str, number: int, message: str, label: int = OPT) -> _Field:
    return (name, number, MESSAGE, label, f".{PACKAGE}.{message}", {})


def _e(name: str, number: int, enum: str) -> _Field:
    return (name, number, ENUM, OPT, f".{PACKAGE}.{enum}", {})


MESSAGES: dict[str, list[_Field]] = {
    "BlobShape": [_f("dim", 1, INT64, REP, packed=True)],
    "BlobProto": [
        _m("shape", 7, "BlobShape"),
        _f("data", 5, FLOAT, REP, packed=True),
        _f("diff", 6, FLOAT, REP, packed=True),
        _f("double_data", 8, DOUBLE, REP, packed=True),
        _f("double_diff", 9, DOUBLE, REP, packed=True),
        _f("num", 1, INT32),
        _f("channels", 2, INT32),
        _f("height", 3, INT32),
        _f("width", 4, INT32),
    ],
    "FillerParameter": [
        _f("type", 1, STRING),
        _f("value", 2, FLOAT),
        _f("mean", 5, FLOAT),
        _f("std", 6, FLOAT),
    ],
    "ParamSpec": [_f("name", 1, STRING), _f("lr_mult", 3, FLOAT), _f("decay_mult", 4, FLOAT)],
    "NetStateRule": [_e("phase", 1, "Phase"), _f("min_level", 2, INT32), _f("max_level", 3, INT32)],
    "ConvolutionParameter": [
        _f("num_output", 1, UINT32),
        _f("bias_term", 2, BOOL),
        _f("pad", 3, UINT32, REP),
        _f("kernel_size", 4, UINT32, REP),
        _f("group", 5, UINT32),
        _f("stride", 6, UINT32, REP),
        _m("weight_filler", 7, "FillerParameter"),
        _m("bias_filler", 8, "FillerParameter"),
    ],
    "PoolingParameter": [
        _e("pool", 1, "PoolMethod"),
        _f("kernel_size", 2, UINT32),
        _f("stride", 3, UINT32),
        _f("pad", 4, UINT32),
        _f("kernel_h", 5, UINT32),
        _f("kernel_w", 6, UINT32),
        _f("stride_h", 7, UINT32),
        _f("stride_w", 8, UINT32),
        _f("pad_h", 9, UINT32),
        _f("pad_w", 10, UINT32),
        _f("global_pooling", 12, BOOL),
    ],
    "LRNParameter": [
        _f("local_size", 1, UINT32),
        _f("alpha", 2, FLOAT),
        _f("beta", 3, FLOAT),
        _e("norm_region", 4, "NormRegion"),
        _f("k", 5, FLOAT),
    ],
    "ReLUParameter": [_f("negative_slope", 1, FLOAT)],
    "InnerProductParameter": [
        _f("num_output", 1, UINT32),
        _f("bias_term", 2, BOOL),
        _m("weight_filler", 3, "FillerParameter"),
        _m("bias_filler", 4, "FillerParameter"),
    ],
    "DropoutParameter": [_f("dropout_ratio", 1, FLOAT)],
    "ConcatParameter": [_f("axis", 2, INT32), _f("concat_dim", 1, UINT32)],
    "FlattenParameter": [_f("axis", 1, INT32), _f("end_axis", 2, INT32)],
    "InputParameter": [_m("shape", 1, "BlobShape", REP)],
    "SPPParameter": [_f("pyramid_height", 1, UINT32), _e("pool", 2, "PoolMethod")],
    "SoftmaxParameter": [_f("axis", 2, INT32)],
    "PowerParameter": [_f("power", 1, FLOAT), _f("scale", 2, FLOAT), _f("shift", 3, FLOAT)],
    "LayerParameter": [
        _f("name", 1, STRING),
        _f("type", 2, STRING),
        _f("bottom", 3, STRING, REP),
        _f("top", 4, STRING, REP),
        _e("phase", 10, "Phase"),
        _m("param", 6, "ParamSpec", REP),
        _m("blobs", 7, "BlobProto", REP),
        _m("include", 8, "NetStateRule", REP),
        _m("exclude", 9, "NetStateRule", REP),
        _m("concat_param", 104, "ConcatParameter"),
        _m("convolution_param", 106, "ConvolutionParameter"),
        _m("dropout_param", 108, "DropoutParameter"),
        _m("flatten_param", 135, "FlattenParameter"),
        _m("inner_product_param", 117, "InnerProductParameter"),
        _m("input_param", 143, "InputParameter"),
        _m("lrn_param", 118, "LRNParameter"),
        _m("pooling_param", 121, "PoolingParameter"),
        _m("power_param", 122, "PowerParameter"),
        _m("relu_param", 123, "ReLUParameter"),
        _m("softmax_param", 125, "SoftmaxParameter"),
        _m("spp_param", 132, "SPPParameter"),
    ],
    "V0LayerParameter": [
        _f("name", 1, STRING),
        _f("type", 2, STRING),
        _m("blobs", 50, "BlobProto", REP),
    ],
    "V1LayerParameter": [
        _f("bottom", 2, STRING, REP),
        _f("top", 3, STRING, REP),
        _f("name", 4, STRING),
        _e("type", 5, "V1LayerType"),
        _m("blobs", 6, "BlobProto", REP),
        _m("layer", 1, "V0LayerParameter"),
    ],
    "NetParameter": [
        _f("name", 1, STRING),
        _f("input", 3, STRING, REP),
        _m("input_shape", 8, "BlobShape", REP),
        _f("input_dim", 4, INT32, REP),
        _m("layer", 100, "LayerParameter", REP),
        _m("layers", 2, "V1LayerParameter", REP),
    ],
}

# Field numbers the streaming reader walks without building messages (`caffemodel.py`).
NET_LAYER, NET_LAYERS = 100, 2
V2_BLOBS, V1_BLOBS, V1_V0_LAYER, V0_BLOBS = 7, 6, 1, 50
BLOB_DATA, BLOB_DOUBLE_DATA, BLOB_DIFF, BLOB_DOUBLE_DIFF = 5, 8, 6, 9


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="sppnet_caffe.proto", package=PACKAGE, syntax="proto2")
    for name, values in ENUMS.items():
        enum = proto.enum_type.add(name=name)
        for key, number in values.items():
            enum.value.add(name=key, number=number)
    for name, fields in MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name, options in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
            if options.get("packed"):
                field.options.packed = True
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
_CLASSES = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in MESSAGES
}

BlobShape: Any = _CLASSES["BlobShape"]
BlobProto: Any = _CLASSES["BlobProto"]
NetParameter: Any = _CLASSES["NetParameter"]
LayerParameter: Any = _CLASSES["LayerParameter"]
V1LayerParameter: Any = _CLASSES["V1LayerParameter"]
V0LayerParameter: Any = _CLASSES["V0LayerParameter"]
V1_TYPE_NAMES: dict[int, str] = {number: name for name, number in ENUMS["V1LayerType"].items()}
