"""The shard decoders of csrc/loader/ (tar.c, decode.c, pattern.c) through their single-call
bindings: the streaming tar parser against Python's tarfile and GNU tar archives (every chunking,
truncation at many cut points, crafted headers), webdataset's key split, .npy against np.save,
JPEG decode/resize/crop/flip/normalise against Pillow and NumPy, corrupt JPEGs in a subprocess
(a crash fails the test instead of killing pytest), and brace patterns against `braceexpand`."""

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest

from dutycycle import _C
from dutycycle._C import DataFormatError

# ---------------------------------------------------------------------------------------------
# tar
# ---------------------------------------------------------------------------------------------

CHUNKS = (0, 1, 7, 512, 513)


def ref_members(data):
    """(name, offset, bytes) of the regular members, as tarfile reads them."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for m in tf:
            if m.isreg():
                out.append((m.name, m.offset, tf.extractfile(m).read()))
    return out


def boundaries(data):
    """Cut points where the archive is complete: every header chain's offset, and the end block on."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        offs = {m.offset for m in tf.getmembers()}
        end = tf.offset
    return offs | {end}, end


def add(tf, name, data=b"", type=tarfile.REGTYPE, **kw):
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.mtime = 1700000000
    for k, v in kw.items():
        setattr(ti, k, v)
    if type == tarfile.REGTYPE:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def sample_archive(fmt):
    rng = np.random.default_rng(fmt)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        add(tf, "dir", type=tarfile.DIRTYPE)
        add(tf, "dir/000001.jpg", rng.bytes(1000))
        add(tf, "dir/000001.cls", b"7")
        add(tf, "dir/empty.txt", b"")
        add(tf, "link", type=tarfile.SYMTYPE, linkname="dir/000001.jpg")
        add(tf, "hard", type=tarfile.LNKTYPE, linkname="dir/000001.cls")
        add(tf, "fifo", type=tarfile.FIFOTYPE)
        add(tf, "d" * 60 + "/" + "e" * 60 + ".npy", rng.bytes(512))  # ustar prefix
        add(tf, "exact512.bin", rng.bytes(512))
        if fmt != tarfile.USTAR_FORMAT:
            add(tf, "long/" + "x" * 150 + ".sample.json", b'{"a": 1}')  # GNU 'L' or pax path
            add(tf, "ünïcödé/名前.txt", "text".encode())
            add(tf, "s" * 101, type=tarfile.SYMTYPE, linkname="t" * 120)  # long link name ('K')
        add(tf, "last.bin", rng.bytes(3000))
    return buf.getvalue()


FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("chunk", CHUNKS)
def test_tar_matches_tarfile(fmt, chunk):
    data = sample_archive(FORMATS[fmt])
    want = ref_members(data)
    assert len(want) >= 6
    assert _C.tar_members(data, chunk) == want


def test_tar_skips_non_regular_members_and_keeps_empty_files():
    data = sample_archive(tarfile.GNU_FORMAT)
    names = [n for n, _, _ in _C.tar_members(data)]
    assert "dir/empty.txt" in names
    assert not {"dir", "link", "hard", "fifo"} & set(names)
    assert not any(n.startswith("sss") for n in names)


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar CLI")
@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax", "v7"])
def test_tar_cli_archives(tmp_path, fmt):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(1)
    files = {"a.txt": b"hello", "sub/b.bin": rng.bytes(70000), "sub/empty": b"", "sub/deeper/c.d.e": rng.bytes(513)}
    if fmt != "v7":
        files["sub/" + "L" * 80 + "/" + "n" * 90 + ".npy"] = rng.bytes(100)
    if fmt in ("gnu", "pax"):
        files["sub/" + "q" * 200 + ".json"] = b"{}"
        files["sub/ünï.txt"] = b"u"
    for name, d in files.items():
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(d)
    os.symlink("a.txt", src / "sym")
    out = tmp_path / "x.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(out), "-C", str(src), "."], check=True)
    data = out.read_bytes()
    want = ref_members(data)
    assert sorted(n.removeprefix("./") for n, _, _ in want) == sorted(files)
    for chunk in CHUNKS:
        assert _C.tar_members(data, chunk) == want


def test_tar_offsets_of_pax_and_longname_members_point_at_the_extended_header():
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        data = sample_archive(fmt)
        for name, off, _ in _C.tar_members(data):
            hdr = data[off : off + 512]
            if len(name.encode()) > 100 or (fmt == tarfile.PAX_FORMAT and not name.isascii()):
                assert hdr[156:157] in (b"L", b"x"), name
            else:
                assert hdr[156:157] in (b"0", b"\0"), name


def test_tar_pax_global_header_is_skipped():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "g"}) as tf:
        add(tf, "a.x", b"1")
        add(tf, "b.x", b"22")
    data = buf.getvalue()
    assert data[156:157] == b"g"
    for chunk in CHUNKS:
        assert _C.tar_members(data, chunk) == ref_members(data)


def test_tar_truncation_at_many_cut_points():
    data = sample_archive(tarfile.PAX_FORMAT)
    bounds, end = boundaries(data)
    full = _C.tar_members(data)
    cuts = sorted(set(range(1, len(data), 97)) | {b + d for b in bounds for d in (-1, 0, 1, 511, 512, 513)})
    for cut in cuts:
        if not 0 < cut < len(data):
            continue
        part = data[:cut]
        if cut in bounds or cut >= end:
            got = _C.tar_members(part, 7)
            assert got == [m for m in full if m[1] < cut]
            continue
        with pytest.raises(DataFormatError) as ei:
            _C.tar_members(part, 513)
        msg = str(ei.value)
        assert "truncated tar" in msg and f"ended at byte {cut}" in msg, (cut, msg)
        # a cut inside a member's data names the member and its header's offset
        for name, off, body in full:
            start = off + 512
            if data[off + 156 : off + 157] in (b"0", b"\0") and start <= cut < start + len(body):
                assert repr(name)[1:-1] in msg and f"at byte {off}" in msg, msg


def test_tar_bad_checksum():
    data = bytearray(sample_archive(tarfile.GNU_FORMAT))
    second = _C.tar_members(bytes(data))[1][1]
    data[second + 3] ^= 0x20
    with pytest.raises(DataFormatError, match=f"bad header checksum at byte {second}"):
        _C.tar_members(bytes(data))
    data[3] ^= 0x20  # the first header: nothing comes out
    with pytest.raises(DataFormatError, match="bad header checksum at byte 0"):
        _C.tar_members(bytes(data), 1)


def raw_header(name, size=0, typeflag=b"0", size_field=None, magic=b"ustar\x0000", prefix=b"", signed=False):
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = size_field if size_field is not None else b"%011o\0" % size
    h[136:148] = b"14000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[257:265] = magic
    h[345 : 345 + len(prefix)] = prefix
    cs = sum((b - 256 if b >= 128 else b) if signed else b for b in h)
    h[148:156] = b"%06o\0 " % (cs & 0o777777 if cs >= 0 else cs + (1 << 18))
    return bytes(h)


def pad(b):
    return b + b"\0" * (-len(b) % 512)


def pax_record(key, value):
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def test_tar_crafted_headers_base256_signed_checksum_pax_size():
    body = bytes(range(256)) * 3
    b256 = b"\x80" + len(body).to_bytes(11, "big")
    parts = [
        raw_header(b"big.bin", size_field=b256) + pad(body),
        raw_header("é-signed.bin".encode("latin-1"), 3, signed=True) + pad(b"abc"),
        raw_header(b"PaxHeaders/x", len(pax_record("size", 5) + pax_record("path", "p/real.name")), b"x")
        + pad(pax_record("size", 5) + pax_record("path", "p/real.name")),
        raw_header(b"short", 0) + pad(b"12345"),
        raw_header(b"name", 2, prefix=b"pre/fix") + pad(b"hi"),
        raw_header(b"gnu-no-prefix", 1, magic=b"ustar  \0", prefix=b"ignored") + pad(b"g"),
    ]
    data = b"".join(parts) + b"\0" * 1024
    want = ref_members(data)
    # the prefix field counts only under the POSIX magic "ustar\000" (GNU tar's rule: old-GNU headers
    # keep atime/ctime there); tarfile applies it to any header
    assert want[4][0] == "ignored/gnu-no-prefix"
    want[4] = ("gnu-no-prefix",) + want[4][1:]
    if shutil.which("tar"):
        listing = subprocess.run(["tar", "-tf", "-"], input=data, capture_output=True, check=True).stdout
        assert listing.split(b"\n")[4] == b"gnu-no-prefix"
    # a name that is not UTF-8 comes back surrogate-escaped, as tarfile gives it
    assert [n for n, _, _ in want] == ["big.bin", "\udce9-signed.bin", "p/real.name", "pre/fix/name", "gnu-no-prefix"]
    assert want[0][2] == body and want[2][2] == b"12345"
    for chunk in CHUNKS:
        assert _C.tar_members(data, chunk) == want
    # a negative base-256 size and a non-octal size are errors naming the header
    for field in (b"\xff" * 12, b"0000000009a\0"):
        with pytest.raises(DataFormatError, match="bad size field in the header at byte 0"):
            _C.tar_members(raw_header(b"n", size_field=field) + b"\0" * 1024)


def test_tar_end_of_archive_and_trailing_garbage():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        add(tf, "a.txt", b"x" * 10)
    data = buf.getvalue()
    want = ref_members(data)
    first_zero = 1024
    for tail in (b"garbage" * 300, b"\xff" * 512, raw_header(b"after.txt", 1) + pad(b"z")):
        assert _C.tar_members(data + tail) == want
    assert _C.tar_members(data[:first_zero]) == want  # no end blocks at all
    assert _C.tar_members(data[: first_zero + 100]) == want  # inside the end blocks
    assert _C.tar_members(b"") == []


def test_tar_limits():
    long_name = b"n" * (70 * 1024)
    data = raw_header(b"././@LongLink", len(long_name) + 1, b"L") + pad(long_name + b"\0") + raw_header(b"x", 0)
    with pytest.raises(DataFormatError, match="long name"):
        _C.tar_members(data + b"\0" * 1024)


def test_wds_split_matches_base_plus_ext():
    from webdataset.tariterators import base_plus_ext

    names = [
        "a/000123.x.npy",
        "000123.jpg",
        "a/b/c.d.e",
        "noext",
        "a/noext",
        "a.b/c",
        "a.b/c.d",
        "a/.hidden",
        "a/b/.x",
        "a.b/.x",
        ".x",
        "a//.x",
        "x.",
        "a/b.",
        "dir.v1/x.tar.gz",
        "./a/b.c",
        "../a.b",
        "é/ü.ñ.jpg",
        "a/b/c/",
        "a.",
        "..",
        "a/..",
        "a/.b.c",
        "x/y.z/w.v",
    ]
    for n in names:
        want = base_plus_ext(n)
        got = _C.wds_split(n)
        assert (got if got else (None, None)) == want, n


def test_webdataset_tarwriter_shards():
    wds = pytest.importorskip("webdataset")
    from webdataset.tariterators import base_plus_ext

    buf = io.BytesIO()
    samples = []
    with wds.TarWriter(buf) as w:
        for i in range(20):
            s = {
                "__key__": f"shard/sample{i:06d}",
                "cls": str(i % 3),
                "x.npy": np.arange(i, dtype=np.float32),
                "json": {"i": i},
            }
            w.write(s)
            samples.append(s)
    data = buf.getvalue()
    got = _C.tar_members(data, 4096)
    assert [(n, o) for n, o, _ in got] == [(n, o) for n, o, _ in ref_members(data)]
    keys = {}
    for name, _, body in got:
        key, field = _C.wds_split(name)
        assert (key, field) == base_plus_ext(name)
        keys.setdefault(key, {})[field] = body
    assert list(keys) == [s["__key__"] for s in samples]
    for s in samples:
        fields = keys[s["__key__"]]
        assert set(fields) == {"cls", "x.npy", "json"}
        dt, shape, raw = _C.npy_decode(fields["x.npy"])
        np.testing.assert_array_equal(np.frombuffer(raw, dt).reshape(shape), s["x.npy"])


# ---------------------------------------------------------------------------------------------
# .npy
# ---------------------------------------------------------------------------------------------


def npy_load(data):
    dt, shape, raw = _C.npy_decode(data)
    return np.frombuffer(raw, dtype=dt).reshape(shape)


DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 4, 5), (0,), (2, 0, 3), (1, 1, 1, 1, 1, 1, 1, 2)])
def test_npy_matches_np_save(dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.random(shape) * 100).astype(dtype)
    buf = io.BytesIO()
    np.save(buf, a)
    got = npy_load(buf.getvalue())
    assert got.dtype == a.dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_versions_and_large_shapes(version):
    a = np.arange(256 * 1024, dtype=np.float32).reshape(256, 1024)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=version)
    assert buf.getvalue()[6] == version[0]
    np.testing.assert_array_equal(npy_load(buf.getvalue()), a)


def npy_with_header(header, data=b"", version=1):
    h = header.encode() if isinstance(header, str) else header
    if version == 1:
        return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + data
    return b"\x93NUMPY" + bytes([version, 0]) + len(h).to_bytes(4, "little") + h + data


def test_npy_header_spellings():
    data = np.arange(12, dtype="<f4").tobytes()
    for hdr in [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
        "{'shape':(3,4),'fortran_order':False,'descr':'<f4'}",
        '{ "descr" : "<f4" , "shape" : ( 3 , 4 ) , "fortran_order" : False }\n',
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 4L), 'extra': {'a': [1, (2,)]}}",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (12,)}",  # 1-d: Fortran order is C order
    ]:
        got = npy_load(npy_with_header(hdr, data))
        assert got.size == 12 and got.dtype == np.float32, hdr
        np.testing.assert_array_equal(got.ravel(), np.arange(12, dtype=np.float32))
    assert npy_load(npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': ()}", b"\x07")) == 7


def test_npy_errors():
    def save(a, **kw):
        buf = io.BytesIO()
        np.save(buf, a, **kw)
        return buf.getvalue()

    cases = [
        (save(np.asfortranarray(np.zeros((3, 4), np.float32))), "Fortran"),
        (save(np.zeros(3, ">f4")), "big-endian .npy dtype '>f4'"),
        (save(np.array([1, "a"], dtype=object), allow_pickle=True), "objects"),
        (save(np.zeros(3, np.uint16)), "'<u2'"),
        (save(np.zeros(3, np.complex64)), "'<c8'"),
        (save(np.zeros(3, [("a", "<f4")])), "structured"),
        (save(np.zeros(10, np.float64))[:-1], "truncated .npy: 80 data bytes"),
        (save(np.zeros(10))[:20], "truncated .npy"),
        (b"\x93NUMPX\x01\x00", "bad magic"),
        (b"PK\x03\x04" + b"\0" * 100, "bad magic"),
        (npy_with_header("{'descr': '<f4', 'shape': (3,)}"), "missing 'fortran_order'"),
        (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3,"), "bad .npy header"),
        (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-3,)}"), "bad .npy header"),
        (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,2,3,4,5,6,7,8,9)}"), "8 dimensions"),
        (npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296)}"), "overflows"),
        (npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", version=7), "version 7.0"),
    ]
    for data, msg in cases:
        with pytest.raises(DataFormatError, match=re.escape(msg)):
            _C.npy_decode(data)


# ---------------------------------------------------------------------------------------------
# JPEG
# ---------------------------------------------------------------------------------------------

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def smooth_image(h=375, w=500, seed=0):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ph = np.random.default_rng(seed).random(3) * 6
    img = np.stack(
        [
            128 + 100 * np.sin(xx / 23.0 + ph[0]) * np.cos(yy / 17.0),
            128 + 80 * np.sin((xx + yy) / 31.0 + ph[1]),
            xx * 200 / w + 20 * np.cos(yy / 9.0 + ph[2]),
        ],
        -1,
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_bytes(arr, mode="RGB", **kw):
    im = Image.fromarray(arr)
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=kw.pop("quality", 92), **kw)
    return buf.getvalue()


def decode(data, **kw):
    raw, shape = _C.jpeg_decode(data, **kw)
    dt = {"uint8": np.uint8, "float32": np.float32, "bfloat16": np.uint16}[kw.get("dtype", "uint8")]
    return np.frombuffer(raw, dt).reshape(shape)


def pil_rgb(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def mad(a, b):
    return np.abs(a.astype(np.int32) - b.astype(np.int32)).mean()


@pytest.mark.parametrize(
    "mode,kw",
    [("RGB", {}), ("RGB", {"subsampling": 0}), ("RGB", {"progressive": True}), ("L", {}), ("CMYK", {})],
)
def test_jpeg_decode_matches_pillow(mode, kw):
    data = jpeg_bytes(smooth_image(), mode, **kw)
    got = decode(data)
    want = pil_rgb(data)
    assert got.shape == want.shape == (375, 500, 3)
    assert mad(got, want) < 1.0
    h, w, c = _C.jpeg_info(data)
    assert (h, w, c) == (375, 500, {"RGB": 3, "L": 1, "CMYK": 4}[mode])


@pytest.mark.parametrize("resize", [400, 370, 300, 256, 224, 100, 37])
def test_jpeg_resize_matches_pillow_bilinear(resize):
    data = jpeg_bytes(smooth_image())
    got = decode(data, resize=resize)
    short, long_ = resize, int(resize * 500 / 375)
    assert got.shape == (short, long_, 3)
    want = np.asarray(
        Image.open(io.BytesIO(data)).convert("RGB").resize((long_, short), Image.BILINEAR, reducing_gap=None)
    )
    # no DCT scaling applies at >= 7/8 of the size: the same filter and fixed point as Pillow
    if resize > 375 * 7 / 8:
        np.testing.assert_array_equal(got, want)
    # with it, the 1/8..7/8 IDCT does part of the shrinking: close to Pillow, less so when tiny
    assert mad(got, want) < (3.0 if resize >= 100 else 4.5)
    # portrait images resize their width to `resize`
    tall = jpeg_bytes(smooth_image(500, 375))
    assert decode(tall, resize=resize).shape == (int(resize * 500 / 375), resize, 3)


def test_jpeg_center_crop_geometry():
    data = jpeg_bytes(smooth_image())
    full = decode(data)
    got = decode(data, crop="center", size=(201, 300))
    y0, x0 = round((375 - 201) / 2), round((500 - 300) / 2)
    np.testing.assert_array_equal(got, full[y0 : y0 + 201, x0 : x0 + 300])
    # after a resize the crop is a window of the resized image (computed only there)
    r = decode(data, resize=256)
    got = decode(data, resize=256, crop="center", size=224)
    y0, x0 = round((256 - 224) / 2), round((341 - 224) / 2)
    np.testing.assert_array_equal(got, r[y0 : y0 + 224, x0 : x0 + 224])
    h, w = 224, 224
    assert _C.jpeg_decode(data, resize=256, crop="center", size=(h, w))[1] == (h, w, 3)


def test_jpeg_crop_larger_than_image_is_a_value_error():
    data = jpeg_bytes(smooth_image(100, 150))
    with pytest.raises(ValueError, match=r"crop 120x120 is larger than the image, 100x150"):
        _C.jpeg_decode(data, crop="center", size=120)
    with pytest.raises(ValueError, match=r"after resize"):
        _C.jpeg_decode(data, resize=64, crop="random", size=(70, 70))


def find_window(full, win):
    h, w = win.shape[:2]
    for y in range(full.shape[0] - h + 1):
        for x in range(full.shape[1] - w + 1):
            if np.array_equal(full[y, x : x + w], win[0]) and np.array_equal(full[y : y + h, x : x + w], win):
                return y, x
    return None


def test_jpeg_random_crop_is_seeded():
    data = jpeg_bytes(smooth_image(120, 160))
    full = decode(data)
    a = decode(data, crop="random", size=(50, 70), seed=5)
    np.testing.assert_array_equal(a, decode(data, crop="random", size=(50, 70), seed=5))
    pos = {find_window(full, decode(data, crop="random", size=(50, 70), seed=s)) for s in range(8)}
    assert None not in pos and len(pos) > 4


def test_jpeg_flip():
    data = jpeg_bytes(smooth_image())
    for kw in ({}, {"resize": 256, "crop": "center", "size": 224}, {"crop": "random_resized", "size": 64, "seed": 3}):
        base = decode(data, **kw)
        np.testing.assert_array_equal(decode(data, flip_p=1.0, **kw), np.fliplr(base))
    flips = sum(
        np.array_equal(decode(data, resize=32, flip_p=0.5, seed=s), np.fliplr(decode(data, resize=32, seed=s)))
        for s in range(100)
    )
    assert 25 < flips < 75


def test_jpeg_normalise_float32_and_bfloat16():
    data = jpeg_bytes(smooth_image())
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.0)
    u8 = decode(data, resize=64, crop="center", size=(48, 56))
    f = decode(data, resize=64, crop="center", size=(48, 56), dtype="float32", mean=mean, std=std)
    assert f.shape == (3, 48, 56)
    sd = np.array([s if s else 1.0 for s in std], np.float32)
    want = (u8.astype(np.float32) / np.float32(255) - np.array(mean, np.float32)) / sd
    np.testing.assert_array_equal(f, want.transpose(2, 0, 1))
    b = decode(data, resize=64, crop="center", size=(48, 56), dtype="bfloat16", mean=mean, std=std)
    u = f.view(np.uint32).astype(np.uint64)
    rne = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(b, rne)


def test_jpeg_random_resized_crop_distribution():
    # R encodes x and G encodes y (256 x 256), so the output's value range shows the region taken
    yy, xx = np.mgrid[0:256, 0:256]
    grad = np.stack([xx, yy, np.full_like(xx, 128)], -1).astype(np.uint8)
    data = jpeg_bytes(grad, quality=100, subsampling=0)
    areas, ratios, corners = [], [], set()
    for s in range(150):
        out = decode(data, crop="random_resized", size=(32, 48), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed=s)
        assert out.shape == (32, 48, 3)
        r, g = out[..., 0].astype(int), out[..., 1].astype(int)
        w, h = r.max() - r.min() + 1, g.max() - g.min() + 1
        areas.append(w * h / 256**2)
        ratios.append(w / h)
        corners.add((r.min() // 8, g.min() // 8))
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() > 0.04 and areas.max() <= 1.05
    assert 0.35 < areas.mean() < 0.7
    assert ratios.min() > 0.6 and ratios.max() < 1.6
    assert len(corners) > 40
    np.testing.assert_array_equal(
        decode(data, crop="random_resized", size=40, seed=9), decode(data, crop="random_resized", size=40, seed=9)
    )
    # the fallback when no try fits: a central crop of the clamped ratio
    wide = jpeg_bytes(smooth_image(50, 400))
    assert decode(wide, crop="random_resized", size=(20, 20), scale=(0.9, 1.0), ratio=(1.0, 1.0)).shape == (20, 20, 3)


def test_jpeg_out_size_and_options():
    data = jpeg_bytes(smooth_image(100, 150))
    assert decode(data, resize=50).shape == (50, 75, 3)
    assert decode(data, resize=50, crop="random_resized", size=(30, 20), seed=1).shape == (30, 20, 3)
    for kw in (
        {"crop": "center"},
        {"crop": "sideways", "size": 10},
        {"dtype": "int8"},
        {"flip_p": 2.0},
        {"crop": "random_resized", "size": 10, "scale": (0.5, 0.1)},
        {"resize": -1},
    ):
        with pytest.raises(ValueError):
            _C.jpeg_decode(data, **kw)


CORRUPT_SCRIPT = textwrap.dedent(
    """
    import io, sys
    import numpy as np
    from PIL import Image
    from dutycycle import _C
    from dutycycle._C import DataFormatError

    yy, xx = np.mgrid[0:120, 0:160]
    arr = np.stack([xx, yy, (xx * yy) % 256], -1).astype(np.uint8)
    results = []
    for prog in (False, True):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90, progressive=prog)
        good = buf.getvalue()
        sos = good.rfind(b"\\xff\\xda") if not prog else good.find(b"\\xff\\xda")
        cases = {}
        for frac in (0.05, 0.3, 0.5, 0.8, 0.95):
            cases[f"cut{frac}"] = good[: int(len(good) * frac)]
        cases["no-eoi"] = good[:-2]
        cases["cut-in-scan"] = good[: sos + 40]
        bad = bytearray(good)
        mid = (sos + len(good)) // 2
        bad[mid : mid + 8] = b"\\xff\\x01" * 4
        cases["marker-in-scan"] = bytes(bad)
        bad = bytearray(good)
        bad[sos + 30 : len(good) - 20] = b"\\xff\\xff" * ((len(good) - 50 - sos) // 2)
        cases["scan-wiped"] = bytes(bad)
        cases["not-a-jpeg"] = b"hello, world" * 10
        cases["empty"] = b""
        cases["soi-only"] = b"\\xff\\xd8"
        cases["header-only"] = good[:sos]
        for name, data in cases.items():
            for kw in ({}, {"resize": 32, "crop": "center", "size": 24, "dtype": "float32"}):
                try:
                    _C.jpeg_decode(data, **kw)
                    results.append(f"{prog} {name} decoded")
                except DataFormatError as e:
                    results.append(f"{prog} {name} DataFormatError {e}")
            try:
                _C.jpeg_info(data)
            except DataFormatError:
                pass
        # random byte flips in the scan: any outcome but a crash
        rng = np.random.default_rng(0)
        for i in range(60):
            bad = bytearray(good)
            for p in rng.integers(sos + 2, len(good) - 2, size=int(rng.integers(1, 6))):
                bad[p] ^= int(rng.integers(1, 256))
            try:
                _C.jpeg_decode(bytes(bad), resize=40)
            except DataFormatError:
                pass
    print("\\n".join(results))
    """
)


def test_corrupt_jpegs_raise_without_crashing():
    r = subprocess.run(
        [sys.executable, "-c", CORRUPT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 * 2 * 13
    for line in lines:
        assert "DataFormatError" in line, line
    assert any("Premature end of JPEG file" in s for s in lines)
    assert any("Corrupt JPEG data" in s for s in lines)
    assert any("Not a JPEG file" in s for s in lines)


# ---------------------------------------------------------------------------------------------
# brace patterns
# ---------------------------------------------------------------------------------------------

PATTERNS = [
    "",
    "abc",
    "{a,b}",
    "{a,b}{c,d}",
    "x{1..3}y",
    "{000..010}",
    "{07..10}",
    "{7..010}",
    "{-1..2}",
    "{2..-1}",
    "{-01..3}",
    "{0..20..5}",
    "{20..0..5}",
    "{1..10..-3}",
    "{1..3..0}",
    "{5..5}",
    "{0..0}",
    "{-0..2}",
    "{00..-2}",
    "{a..e}",
    "{e..a}",
    "{a..e..2}",
    "{Z..b}",
    "{b..Z}",
    "{A..A}",
    "{a..A}",
    "{x}",
    "{}",
    "{,}",
    "{a,}",
    "{,a}",
    "{a,b{1..3}}",
    "python{2.{5..7},3.{2,3}}",
    "\\{a,b}",
    "\\{a,b\\}",
    "{a\\,b,c}",
    "a\\\\b",
    "{1..3}{a..b}{x,y}",
    "}{",
    "a}b{",
    "{{a,b}}",
    "{a,{b,c}}",
    "{{1..2}}",
    "{a..}",
    "{..a}",
    "{1...3}",
    "{a-b}",
    "\\",
    "a\\",
    "{a,b}\\",
    "{1..3}x{}",
    "s3://bucket/train-{000000..000127}.tar",
    "{ab..cd}",
    "{a..b..c}",
    "{a..c..-1}",
    "{1..2..}",
    "{x{y}z,w}",
    "pre{a,b}mid{1..2}post{c}",
    "{a,b\\}c}",
    "\\a\\b{1,2}",
    "{1..4..3}",
    "{Y..c..3}",
    "{0001..3}",
    "{-3..-1}",
    "{1,2}{3,4}{5,6}",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_expand_braces_matches_braceexpand(pattern):
    braceexpand = pytest.importorskip("braceexpand")
    try:
        want = list(braceexpand.braceexpand(pattern))
    except braceexpand.UnbalancedBracesError:
        with pytest.raises(ValueError, match="unbalanced braces"):
            _C.expand_braces(pattern)
        return
    assert _C.expand_braces(pattern) == want


def test_expand_braces_errors():
    braceexpand = pytest.importorskip("braceexpand")
    for pat, pos in [("{a,b", 0), ("x{1{2,3}", 1), ("a{b}}", 4), ("{a}{", 3), ("{{{", 0), ("\\{a,b}", 5)]:
        with pytest.raises(braceexpand.UnbalancedBracesError):
            list(braceexpand.braceexpand(pat))
        with pytest.raises(ValueError, match=f"position {pos}"):
            _C.expand_braces(pat)
    with pytest.raises(ValueError, match="more than 1000 names"):
        _C.expand_braces("{1..100}{1..100}", max_count=1000)
    assert len(_C.expand_braces("{1..100}{1..10}", max_count=1000)) == 1000
    with pytest.raises(ValueError, match="nested deeper"):
        _C.expand_braces("{" * 200 + "a,b" + "}" * 200)
    with pytest.raises(ValueError, match="more than"):
        _C.expand_braces("{0..99999999999}")


def test_decoders_from_many_threads_match_serial():
    from concurrent.futures import ThreadPoolExecutor

    jpegs = [jpeg_bytes(smooth_image(120 + 8 * i, 160, seed=i)) for i in range(8)]
    tar = sample_archive(tarfile.PAX_FORMAT)

    def work(i):
        d = jpegs[i % len(jpegs)]
        img = _C.jpeg_decode(d, resize=64, crop="random_resized", size=48, flip_p=0.5, seed=i, dtype="float32")
        return img, _C.tar_members(tar, 1 + i), _C.expand_braces("{0..9}{a,b}")

    serial = [work(i) for i in range(32)]
    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(work, range(32))) == serial
