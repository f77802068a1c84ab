"""Copies a libtorch tensor archive (`.ot`) with the first tensor's storage offset, as
`data.pkl` records it, replaced by 2**30: a tensor that reaches far past its storage.

Usage: make_lying_ot.py GOOD.ot BAD.ot; prints {"tensor_pickles": N} as JSON.
"""
import json
import pickletools
import struct
import sys
import zipfile

good, bad = sys.argv[1], sys.argv[2]
src = zipfile.ZipFile(good)
out = zipfile.ZipFile(bad, "w")
done = 0
for info in src.infolist():
    data = src.read(info.filename)
    if info.filename.endswith("/data.pkl") and not done:
        ops = list(pickletools.genops(data))
        # _rebuild_tensor_v2(storage, storage_offset, size, ...): the storage is a persistent
        # load; the int right after it is the offset.
        i = next(k for k, (op, _, _) in enumerate(ops) if op.name == "BINPERSID")
        op, _, pos = next(o for o in ops[i + 1:] if o[0].name in ("BININT1", "BININT2", "BININT"))
        width = {"BININT1": 2, "BININT2": 3, "BININT": 5}[op.name]
        data = data[:pos] + b"J" + struct.pack("<i", 2**30) + data[pos + width:]
        done = 1
    z = zipfile.ZipInfo(info.filename, date_time=info.date_time)
    z.compress_type = info.compress_type
    out.writestr(z, data)
out.close()
print(json.dumps({"tensor_pickles": done}))
