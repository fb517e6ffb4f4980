"""One image decoder for every reader: 16-bit, palette, alpha and float files; id lists."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from adverse_vision import predict
from adverse_vision.data import files
from adverse_vision.data.fusion_pairs import read_thermal
from adverse_vision.data.problems import DataError, DataProblems, decode_image

# 16-bit grey values over the whole range; their 8-bit reading is the high byte.
GREY16 = np.array([[0, 255, 256, 257 * 100], [32767, 32768, 65280, 65535]], np.uint16)
GREY8 = (GREY16 >> 8).astype(np.uint8)


def write_png(path, array, color_type):
    """A PNG written byte by byte (big-endian 16-bit samples); Pillow only reads it.
    color_type: 0 grey, 2 RGB, 4 grey + alpha, 6 RGBA."""
    array = np.asarray(array, ">u2")
    h, w = array.shape[:2]

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + array[y].tobytes() for y in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n"
                + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def sixteen_bit_files(tmp_path):
    """The same 16-bit grey image as several files, some with a misleading extension."""
    pil_png = tmp_path / "pil16.jpg"  # a PNG, whatever the name says
    Image.fromarray(GREY16).save(pil_png, format="PNG")
    raw_png = write_png(tmp_path / "raw16.png", GREY16, color_type=0)
    tiff_be = tmp_path / "be16.tif"
    Image.frombytes("I;16B", (4, 2), GREY16.astype(">u2").tobytes()).save(tiff_be, format="TIFF")
    tiff_i = tmp_path / "i32.bmp"  # a 32-bit integer TIFF holding 16-bit values
    Image.fromarray(GREY16.astype(np.int32), "I").save(tiff_i, format="TIFF")
    return [pil_png, raw_png, tiff_be, tiff_i]


def test_sixteen_bit_grey_reads_as_its_high_byte_in_every_reader(tmp_path):
    for path in sixteen_bit_files(tmp_path):
        with Image.open(path) as im:
            assert im.mode in ("I;16", "I;16B", "I"), im.mode
        rgb = np.repeat(GREY8[..., None], 3, axis=2)
        np.testing.assert_array_equal(files.read_rgb(path), rgb)
        np.testing.assert_array_equal(files.read_gray(path), GREY8)
        problems = DataProblems()
        np.testing.assert_array_equal(decode_image(str(path), problems), rgb)  # training
        np.testing.assert_array_equal(predict.read_image(str(path)), rgb)
        np.testing.assert_array_equal(read_thermal(str(path), problems), GREY8[..., None])
        np.testing.assert_array_equal(predict.read_infrared(str(path)), GREY8[..., None])
        assert problems.total == 0


def test_an_eight_bit_image_stored_in_sixteen_bits_reads_back_exactly(tmp_path):
    eight = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = write_png(tmp_path / "x.png", eight.astype(np.uint16) * 257, color_type=0)
    np.testing.assert_array_equal(files.read_gray(path), eight)


def test_sixteen_bit_colour_pngs_keep_their_high_byte(tmp_path):
    rgb16 = np.stack([GREY16, GREY16[::-1], np.full_like(GREY16, 257 * 7)], axis=2)
    path = write_png(tmp_path / "rgb16.png", rgb16, color_type=2)
    np.testing.assert_array_equal(files.read_rgb(path), (rgb16 >> 8).astype(np.uint8))
    rgba16 = np.concatenate([rgb16, np.zeros_like(GREY16)[..., None]], axis=2)  # transparent
    path = write_png(tmp_path / "rgba16.png", rgba16, color_type=6)
    np.testing.assert_array_equal(files.read_rgb(path), (rgb16 >> 8).astype(np.uint8))
    la16 = np.stack([GREY16, np.full_like(GREY16, 65535)], axis=2)
    path = write_png(tmp_path / "la16.png", la16, color_type=4)
    np.testing.assert_array_equal(files.read_gray(path), GREY8)


def test_palette_alpha_and_bilevel_images(tmp_path):
    index = np.array([[0, 1], [2, 1]], np.uint8)
    palette = [10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9)
    pal = Image.fromarray(index, "P")
    pal.putpalette(palette)
    pal.info["transparency"] = 1
    pal.save(tmp_path / "p.png", transparency=1)
    colours = np.array(palette[:9], np.uint8).reshape(3, 3)
    np.testing.assert_array_equal(files.read_rgb(tmp_path / "p.png"), colours[index])
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")  # fully transparent
    np.testing.assert_array_equal(files.read_rgb(tmp_path / "a.png"), rgba[..., :3])
    Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1").save(tmp_path / "b.png")
    np.testing.assert_array_equal(files.read_gray(tmp_path / "b.png"), [[0, 255]])


def test_float_and_out_of_range_images_are_refused_with_the_reason(tmp_path, caplog):
    Image.fromarray(np.full((2, 2), 0.5, np.float32)).save(tmp_path / "f.tif")
    Image.fromarray(np.array([[0, 70000]], np.int32), "I").save(tmp_path / "big.tif")
    for name, reason in (("f.tif", r"floating-point image \(mode 'F'\)"),
                         ("big.tif", r"values 0\.\.70000 outside the 16-bit range")):
        path = str(tmp_path / name)
        with pytest.raises(files.ImageDecodeError, match=reason):
            files.read_rgb(path)
        with pytest.raises(predict.ImageReadError, match=f"cannot read image {path}: .*{reason}"):
            predict.read_image(path)
        problems = DataProblems()
        assert decode_image(path, problems) is None
        assert read_thermal(path, problems) is None
        assert problems.count("corrupt_image") == 2
        assert problems.files("corrupt_image") == [path]


def test_undecodable_files_raise_one_error_type(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(files.ImageDecodeError, match=r"cannot decode image \(Unidentified"):
        files.read_rgb(tmp_path / "bad.png")
    with pytest.raises(files.ImageDecodeError, match="FileNotFoundError"):
        files.read_gray(tmp_path / "missing.png")


def test_id_lists_skip_a_byte_order_mark_and_blank_lines(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes("\ufeffg01 1\n\n g02\r\ng03 -1\n".encode("utf-8"))
    assert files.read_id_list(str(path)) == ["g01", "g02", "g03"]
    path.write_bytes(b"\xff\xfeg\x00")  # UTF-16
    with pytest.raises(DataError, match=f"{path}: cannot read split file"):
        files.read_id_list(str(path), "split file")
