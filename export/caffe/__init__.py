"""Caffe interop: read Caffe models (prototxt V0/V1/V2, caffemodel) into runs, and write runs as Caffe models."""
