"""Write pickles the way Python 2's cPickle wrote the official CIFAR-10 batches: protocol 2,
8-bit strings (SHORT_BINSTRING/BINSTRING, read back as bytes), and numpy arrays rebuilt
through numpy.core.multiarray._reconstruct."""

import struct

import numpy as np


def _string(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _int(v: int) -> bytes:
    return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)


def _value(v) -> bytes:
    if isinstance(v, np.ndarray):
        assert v.dtype == np.uint8
        shape = b"(" + b"".join(_int(d) for d in v.shape) + b"t"
        dtype = (
            b"cnumpy\ndtype\n"
            + _string(b"u1")
            + _int(0)
            + _int(1)
            + b"\x87R"
            + b"("
            + _int(3)
            + _string(b"|")
            + b"NNN"
            + _int(-1)
            + _int(-1)
            + _int(0)
            + b"tb"
        )
        return (
            b"cnumpy.core.multiarray\n_reconstruct\n"
            + b"cnumpy\nndarray\n"
            + _int(0)
            + b"\x85"
            + _string(b"b")
            + b"\x87R"
            + b"("
            + _int(1)
            + shape
            + dtype
            + b"\x89"
            + _string(np.ascontiguousarray(v).tobytes())
            + b"tb"
        )
    if isinstance(v, bytes):
        return _string(v)
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, list):
        return b"](" + b"".join(_value(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"}(" + b"".join(_value(k) + _value(x) for k, x in v.items()) + b"u"
    raise TypeError(type(v))


def dumps(obj) -> bytes:
    return b"\x80\x02" + _value(obj) + b"."
