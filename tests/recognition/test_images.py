import numpy as np
import pytest

from edge.errors import InputError
from edge.recognition.images import check_frame, decode_image, load_image, save_image, to_rgb


def test_good_frame_passes_and_is_contiguous():
    f = np.zeros((40, 60, 3), np.uint8)[:, ::-1]
    out = check_frame(f)
    assert out.flags.c_contiguous and out.shape == (40, 60, 3)


@pytest.mark.parametrize("frame, word", [
    (np.zeros((40, 40), np.uint8), "grayscale"),
    (np.zeros((40, 40, 1), np.uint8), "grayscale"),
    (np.zeros((40, 40, 4), np.uint8), "RGBA"),
    (np.zeros((1, 1, 3), np.uint8), "too small"),
    (np.zeros((40, 40, 3), np.float32), "dtype"),
    (np.zeros((40, 40, 3), np.int64), "dtype"),
    (np.zeros((2, 40, 40, 3), np.uint8), "shape"),
    ("not an image", "numpy array"),
])
def test_bad_arrays_are_refused_clearly(frame, word):
    with pytest.raises(InputError, match=word):
        check_frame(frame)


def test_huge_frame_is_refused_without_allocation():
    # a 20000x20000 view over a tiny buffer: refused by shape before any work is done
    huge = np.lib.stride_tricks.as_strided(np.zeros(3, np.uint8), (20000, 20000, 3), (0, 0, 1))
    with pytest.raises(InputError, match="pixels"):
        check_frame(huge)


def test_to_rgb_converts_grey_and_rgba():
    assert to_rgb(np.zeros((5, 5), np.uint8)).shape == (5, 5, 3)
    assert to_rgb(np.zeros((5, 5, 4), np.uint8)).shape == (5, 5, 3)


def test_file_round_trip_and_grey_file_is_converted(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    save_image(tmp_path / "a.png", rgb)
    assert np.array_equal(load_image(tmp_path / "a.png"), rgb)  # PNG is lossless: channel order kept
    import cv2
    cv2.imwrite(str(tmp_path / "g.png"), rgb[:, :, 0])
    assert load_image(tmp_path / "g.png").shape == (32, 48, 3)


def test_corrupt_truncated_empty_and_missing_files(tmp_path):
    rgb = np.full((64, 64, 3), 128, np.uint8)
    save_image(tmp_path / "ok.jpg", rgb)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[:20])
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("trunc.jpg", "junk.jpg"):
        with pytest.raises(InputError, match="decodable"):
            load_image(tmp_path / name)
    with pytest.raises(InputError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(InputError, match="no such"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InputError, match="folder"):
        load_image(tmp_path)


def test_huge_png_header_is_refused_before_decoding():
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
           + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    with pytest.raises(InputError, match="refused before decoding"):
        decode_image(png, "huge.png")


def test_oversized_file_is_refused(tmp_path):
    p = tmp_path / "big.jpg"
    p.write_bytes(b"\0" * 2048)
    with pytest.raises(InputError, match="limit"):
        load_image(p, max_bytes=1024)
