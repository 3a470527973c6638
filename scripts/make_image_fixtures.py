#!/usr/bin/env python3
"""Image fixtures for the folder loader's format tests (tests/data.rs), written with Pillow.

Only the files the Rust `image` crate cannot write itself are made here: palette PNGs, CMYK and
YCCK JPEGs, a progressive JPEG, and WebP/TIFF files disguised as `.png`. 16-bit, RGBA and
grey+alpha PNGs are written by the tests. The outputs are committed; CI never runs Python.

    ~/.cache/ddpm/pyref/bin/python scripts/make_image_fixtures.py

Most images are 16×16 with four solid 8×8 quadrants, so a JPEG block holds a single colour (only
its DC coefficient) and decodes almost exactly. The painted colours are listed below and
copied, as literals, into tests/data.rs; after writing, each file is read back with Pillow
(libjpeg / libpng) and checked against them, so the fixtures are known good independently of
the Rust decoders under test.

What it writes to tests/fixtures/images/ (quadrants in the order top-left, top-right,
bottom-left, bottom-right):
  palette.png        16×16 indexed, 4 colours (Pillow stores 2 bits per pixel), no transparency
  palette_trns.png   16×16 indexed with a tRNS chunk: opaque, fully transparent, half, opaque
  cmyk_adobe.jpg     16×16 CMYK as Pillow/libjpeg write it: Adobe APP14 marker (transform 0)
                     and inverted samples (255 = no ink), Photoshop's convention
  cmyk_no_adobe.jpg  the same file with the APP14 segment removed: 4 components, no marker
  ycck_adobe.jpg     16×16 YCCK (Adobe APP14 transform 2, what Photoshop writes for CMYK),
                     from the small baseline encoder below since libjpeg's YCCK output is not
                     reachable through Pillow
  grey.jpg           16×16 8-bit greyscale (one component)
  progressive.jpg    16×16 RGB, progressive, 4:4:4, four vertical bands 4 pixels wide (left to
                     right) instead of quadrants
  webp_named.png     an 8×8 WebP file named .png
  tiff_named.png     an 8×8 TIFF file named .png
"""

import io
import struct
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "images"

# Palette images: RGB quadrant colours, and the alpha of each palette entry in palette_trns.png.
PALETTE = [(230, 40, 20), (10, 90, 250), (0, 200, 0), (250, 240, 60)]
PALETTE_ALPHA = [255, 0, 128, 255]
# CMYK quadrants as ink amounts (0 = none, 255 = full).
CMYK = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 128, 255, 0), (40, 80, 160, 100)]
GREYS = [0, 60, 170, 255]
PROGRESSIVE = [(200, 30, 30), (30, 180, 60), (40, 60, 220), (235, 235, 235)]


def quadrants(mode, size, colours):
    """A size×size image whose four quadrants have the given colours."""
    img = Image.new(mode, (size, size))
    h = size // 2
    for i, c in enumerate(colours):
        x, y = (i % 2) * h, (i // 2) * h
        img.paste(c, (x, y, x + h, y + h))
    return img


def cmyk_to_rgb(c, m, y, k):
    """The usual multiplicative conversion: each ink and black remove light independently."""
    return tuple(round((255 - v) * (255 - k) / 255) for v in (c, m, y))


def check(path, mode, want, tol, bands=False):
    """Reads `path` back with Pillow and checks every pixel of each quadrant (or band) that is
    not on its border."""
    img = Image.open(path)
    img.load()
    img = img.convert(mode)
    s = img.size[0]
    for y in range(s):
        for x in range(s):
            if bands:
                i, inner = x // 4, x % 4 in (1, 2)
            else:
                h = s // 2
                i = (y // h) * 2 + x // h
                inner = x % h not in (0, h - 1) and y % h not in (0, h - 1)
            if not inner:
                continue
            got = img.getpixel((x, y))
            got = got if isinstance(got, tuple) else (got,)
            w = want[i] if isinstance(want[i], tuple) else (want[i],)
            assert all(abs(a - b) <= tol for a, b in zip(got, w)), (path.name, x, y, got, w)


def segments(data):
    """(marker, start, end) of each JPEG header segment before the first SOS."""
    assert data[:2] == b"\xff\xd8"
    at = 2
    while True:
        marker = data[at + 1]
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        yield marker, at, at + 2 + length
        if marker == 0xDA:
            return
        at += 2 + length


def strip_app14(data):
    """The JPEG without its Adobe APP14 segment."""
    for marker, start, end in segments(data):
        if marker == 0xEE:
            return data[:start] + data[end:]
    raise AssertionError("no APP14 segment")


# --- A minimal baseline JPEG encoder for images made of solid 8×8 blocks -----------------------
# With every quantiser 1 and a block of one value s, the only non-zero coefficient is
# DC = 8·(s − 128), so the file reproduces the samples exactly; AC is a lone end-of-block.

DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # ITU T.81 table K.3
DC_VALUES = list(range(12))


def huffman_codes(bits, values):
    codes, code, k = {}, 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[values[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


class BitWriter:
    def __init__(self):
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value, length):
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)  # byte stuffing
                self.acc, self.n = 0, 0

    def finish(self):
        while self.n:
            self.put(1, 1)
        return bytes(self.out)


def segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def encode_blocks(blocks, width, height, adobe_transform):
    """`blocks[by][bx]` is the tuple of component samples of block (bx, by)."""
    ncomp = len(blocks[0][0])
    dc = huffman_codes(DC_BITS, DC_VALUES)
    out = b"\xff\xd8"
    if adobe_transform is not None:
        out += segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, adobe_transform))
    out += segment(0xDB, bytes([0]) + bytes([1] * 64))
    sof = struct.pack(">BHHB", 8, height, width, ncomp)
    sof += b"".join(bytes([i + 1, 0x11, 0]) for i in range(ncomp))
    out += segment(0xC0, sof)
    out += segment(0xC4, bytes([0x00]) + bytes(DC_BITS) + bytes(DC_VALUES))
    # AC table with the end-of-block symbol only, code "0".
    out += segment(0xC4, bytes([0x10]) + bytes([1] + [0] * 15) + bytes([0x00]))
    sos = bytes([ncomp]) + b"".join(bytes([i + 1, 0x00]) for i in range(ncomp)) + bytes([0, 63, 0])
    out += segment(0xDA, sos)
    bits = BitWriter()
    pred = [0] * ncomp
    for row in blocks:
        for block in row:
            for c, s in enumerate(block):
                value = 8 * (s - 128)
                diff, pred[c] = value - pred[c], value
                size = abs(diff).bit_length()
                code, length = dc[size]
                bits.put(code, length)
                if size:
                    bits.put(diff if diff > 0 else diff + (1 << size) - 1, size)
                bits.put(0, 1)  # end of block
    return out + bits.finish() + b"\xff\xd9"


def ycck(c, m, y, k):
    """libjpeg's CMYK → YCCK: JFIF YCbCr of the (inverted-sample) CMY as RGB, K kept inverted."""
    r, g, b = c, m, y  # 255 − (255 − ink)
    yy = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return tuple(min(255, max(0, round(v))) for v in (yy, cb, cr, 255 - k))


def save(name, data):
    (OUT / name).write_bytes(data)
    return OUT / name


def encoded(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rgb_cmyk = [cmyk_to_rgb(*c) for c in CMYK]

    pal = Image.new("P", (16, 16))
    pal.putpalette([v for c in PALETTE for v in c])
    for i in range(4):
        x, y = (i % 2) * 8, (i // 2) * 8
        pal.paste(i, (x, y, x + 8, y + 8))
    p = save("palette.png", encoded(pal, "PNG"))
    check(p, "RGB", PALETTE, 0)
    p = save("palette_trns.png", encoded(pal, "PNG", transparency=bytes(PALETTE_ALPHA)))
    check(p, "RGBA", [c + (a,) for c, a in zip(PALETTE, PALETTE_ALPHA)], 0)

    cmyk = quadrants("CMYK", 16, CMYK)
    adobe = encoded(cmyk, "JPEG", quality=100)
    transforms = [d[start + 15] for m, start, _ in segments(adobe) if m == 0xEE for d in [adobe]]
    assert transforms == [0], transforms
    p = save("cmyk_adobe.jpg", adobe)
    check(p, "RGB", rgb_cmyk, 2)
    p = save("cmyk_no_adobe.jpg", strip_app14(adobe))
    check(p, "RGB", rgb_cmyk, 2)

    blocks = [[ycck(*CMYK[2 * by + bx]) for bx in range(2)] for by in range(2)]
    p = save("ycck_adobe.jpg", encode_blocks(blocks, 16, 16, adobe_transform=2))
    assert Image.open(p).mode == "CMYK"
    check(p, "RGB", rgb_cmyk, 2)

    p = save("grey.jpg", encoded(quadrants("L", 16, GREYS), "JPEG", quality=100))
    check(p, "L", GREYS, 1)

    # Bands 4 pixels wide split every 8×8 block, so they exist only in the AC coefficients that
    # the later scans of a progressive file refine: a decoder that stopped after the first
    # (DC) scan would show each block's average colour.
    bands = Image.new("RGB", (16, 16))
    for i, c in enumerate(PROGRESSIVE):
        bands.paste(c, (4 * i, 0, 4 * i + 4, 16))
    prog = encoded(bands, "JPEG", quality=95, subsampling=0, progressive=True)
    assert b"\xff\xc2" in prog  # SOF2: progressive DCT
    p = save("progressive.jpg", prog)
    check(p, "RGB", PROGRESSIVE, 12, bands=True)

    small = quadrants("RGB", 8, PROGRESSIVE)
    p = save("webp_named.png", encoded(small, "WEBP", lossless=True))
    assert Image.open(p).format == "WEBP"
    p = save("tiff_named.png", encoded(small, "TIFF"))
    assert Image.open(p).format == "TIFF"

    for f in sorted(OUT.iterdir()):
        print(f"{f.stat().st_size:6d}  {f.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
