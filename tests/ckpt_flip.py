#!/usr/bin/env python3
"""Damage a copy of a checkpoint the way a disk or a copy does (tests/ckpt_integrity.sh).

  ckpt_flip.py list FILE                 the datasets, one path a line
  ckpt_flip.py flip SRC DST DATASET      DST = SRC with one bit of DATASET's data flipped
                                         (bit 2 of the byte in the middle of its storage: a
                                         low mantissa bit of a float, so the value stays finite)
  ckpt_flip.py strip SRC DST             DST = SRC without any checksum attribute, as a file
                                         written before nnprec stored them
  ckpt_flip.py unhash SRC DST DATASET    DST = SRC without DATASET's checksum attribute
"""
import shutil
import sys

import h5py


def datasets(path):
    names = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append("/" + n) if isinstance(o, h5py.Dataset) else None)
    return names


def main(argv):
    cmd = argv[1]
    if cmd == "list":
        print("\n".join(datasets(argv[2])))
        return
    src, dst = argv[2], argv[3]
    shutil.copyfile(src, dst)
    if cmd == "flip":
        with h5py.File(src, "r") as f:
            d = f[argv[4]]
            off, size = d.id.get_offset(), d.id.get_storage_size()
        if off is None or size == 0:
            sys.exit(f"{argv[4]} has no contiguous storage")
        at = off + size // 2
        with open(dst, "r+b") as out:
            out.seek(at)
            b = out.read(1)[0]
            out.seek(at)
            out.write(bytes([b ^ 0x04]))
    elif cmd == "strip":
        with h5py.File(dst, "r+") as f:
            del f.attrs["checksum"]
            for n in datasets(dst):
                del f[n].attrs["xxh64"]
    elif cmd == "unhash":
        with h5py.File(dst, "r+") as f:
            del f[argv[4]].attrs["xxh64"]
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
