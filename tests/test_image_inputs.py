"""Image inputs of every common type read as the same pixels as the PIL image they hold, or refused by name."""

import numpy as np
import pytest
import torch
from PIL import Image

from processing import DeemImageProcessor

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (10, 14, 3), dtype=np.uint8)  # height 10, width 14: CHW and HWC cannot be confused
RGB[0, 0] = 255  # a white pixel: the 0-255 scale of float copies is unambiguous
GREY = RGB[..., 0]
ALPHA = RNG.integers(0, 256, (10, 14, 1), dtype=np.uint8)


@pytest.fixture(scope="module")
def image_processor() -> DeemImageProcessor:
    return DeemImageProcessor(size=16, decoder_size=12)


def views(image_processor: DeemImageProcessor, image) -> tuple[torch.Tensor, torch.Tensor]:
    out = image_processor.preprocess([image], return_decoder_views=True)
    return out["pixel_values"][0], out["decoder_pixel_values"][0]


def assert_reads_like(image_processor, image, reference: Image.Image, atol: float = 1e-5) -> None:
    (encoder, decoder), (expected_encoder, expected_decoder) = views(image_processor, image), views(
        image_processor, reference)
    assert encoder.shape == expected_encoder.shape and decoder.shape == expected_decoder.shape
    torch.testing.assert_close(encoder, expected_encoder, atol=atol, rtol=0)
    torch.testing.assert_close(decoder, expected_decoder, atol=atol, rtol=0)


def test_torch_uint8_chw_tensor_is_not_white(image_processor):
    """What `torchvision.io.read_image` returns; it used to be read as 0-255 floats, i.e. all white."""
    assert_reads_like(image_processor, torch.from_numpy(RGB).permute(2, 0, 1), Image.fromarray(RGB))


@pytest.mark.parametrize("layout", ["hwc", "hw", "hw_float01"])
def test_torch_hwc_and_hw_tensors(image_processor, layout):
    tensor = {"hwc": torch.from_numpy(RGB), "hw": torch.from_numpy(GREY),
              "hw_float01": torch.from_numpy(GREY).float() / 255}[layout]
    reference = Image.fromarray(RGB if layout == "hwc" else GREY)
    assert_reads_like(image_processor, tensor, reference)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_array_in_0_255_reads_like_uint8(image_processor, dtype):
    assert_reads_like(image_processor, RGB.astype(dtype), Image.fromarray(RGB))
    assert_reads_like(image_processor, torch.from_numpy(RGB.astype(dtype)).permute(2, 0, 1), Image.fromarray(RGB))


def test_float_array_in_0_1_is_taken_as_is(image_processor):
    assert_reads_like(image_processor, RGB.astype(np.float32) / 255, Image.fromarray(RGB))


def test_uint16_array_reads_like_8_bit(image_processor):
    assert_reads_like(image_processor, RGB.astype(np.uint16) * 257, Image.fromarray(RGB))


def test_uint16_dtype_sets_the_scale_even_for_a_dark_image(image_processor):
    """A 16-bit image whose values stay under 256 is dark, not an 8-bit image."""
    dark = GREY.astype(np.uint16) // 32
    assert_reads_like(image_processor, dark, dark.astype(np.float32) / 65535)


def test_16_bit_png_reads_like_8_bit(image_processor, tmp_path):
    Image.fromarray(GREY.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    reopened = Image.open(tmp_path / "grey16.png")
    assert reopened.mode.startswith("I;16")
    assert_reads_like(image_processor, reopened, Image.fromarray(GREY))


def test_big_endian_16_bit_pil_image(image_processor):
    image = Image.frombytes("I;16B", (14, 10), (GREY.astype(">u2") * 257).tobytes())
    assert_reads_like(image_processor, image, Image.fromarray(GREY))


@pytest.mark.parametrize("mode", ["I_16_bit", "I_8_bit", "F_0_255", "F_0_1"])
def test_pil_I_and_F_modes(image_processor, mode):
    values = {"I_16_bit": GREY.astype(np.int32) * 257, "I_8_bit": GREY.astype(np.int32),
              "F_0_255": GREY.astype(np.float32), "F_0_1": GREY.astype(np.float32) / 255}[mode]
    image = Image.fromarray(values)
    assert image.mode == mode[0]
    assert_reads_like(image_processor, image, Image.fromarray(GREY))


def test_hw1_array_reads_like_grey(image_processor):
    """It used to give a 1-channel decoder view (and a stack error next to an RGB image)."""
    assert_reads_like(image_processor, GREY[..., None], Image.fromarray(GREY))
    out = image_processor.preprocess([GREY[..., None], RGB], return_decoder_views=True)
    assert out["decoder_pixel_values"].shape == (2, 3, 12, 12)


def test_chw_array_reads_like_hwc(image_processor):
    assert_reads_like(image_processor, RGB.transpose(2, 0, 1), Image.fromarray(RGB))
    assert_reads_like(image_processor, GREY[None], Image.fromarray(GREY))


def test_four_channels_drop_alpha(image_processor):
    rgba = np.concatenate([RGB, ALPHA], axis=2)
    assert_reads_like(image_processor, rgba, Image.fromarray(RGB))
    assert_reads_like(image_processor, Image.fromarray(rgba), Image.fromarray(RGB))
    assert_reads_like(image_processor, torch.from_numpy(rgba).permute(2, 0, 1), Image.fromarray(RGB))


def test_bool_array_and_mode_1(image_processor):
    on = GREY > 127
    reference = Image.fromarray(on.astype(np.uint8) * 255)
    assert_reads_like(image_processor, on, reference)
    assert_reads_like(image_processor, Image.fromarray(on), reference)


def test_wide_integer_arrays_use_their_range(image_processor):
    assert_reads_like(image_processor, RGB.astype(np.int64), Image.fromarray(RGB))
    assert_reads_like(image_processor, RGB.astype(np.int32) * 257, Image.fromarray(RGB))


@pytest.mark.parametrize("mode", ["L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"])
def test_every_pil_mode_reads_like_its_rgb_conversion(image_processor, mode):
    image = Image.fromarray(np.concatenate([RGB, ALPHA], axis=2)).convert(mode)
    reference = image.convert("LA").convert("RGB") if mode == "La" else image.convert("RGB")
    assert_reads_like(image_processor, image, reference)


def test_tensor_with_grad_and_half_precision(image_processor):
    tensor = (torch.from_numpy(RGB).permute(2, 0, 1).float() / 255).requires_grad_()
    assert_reads_like(image_processor, tensor, Image.fromarray(RGB))
    assert_reads_like(image_processor, tensor.detach().half(), Image.fromarray(RGB), atol=1e-2)


REFUSED = {
    "3x5x4 ambiguous": (np.zeros((3, 5, 4), np.uint8), ValueError, r"Ambiguous channel axis: got a numpy array of "
                                                                   r"shape \(3, 5, 4\) and dtype uint8"),
    "no channel axis": (np.zeros((5, 6, 7), np.uint8), ValueError, r"No channel axis: got a numpy array of shape "
                                                                  r"\(5, 6, 7\) and dtype uint8"),
    "2 channels": (np.zeros((5, 6, 2), np.uint8), ValueError, r"\(5, 6, 2\) and dtype uint8.*2-channel"),
    "nan": (np.full((5, 6), np.nan, np.float32), ValueError, r"shape \(5, 6\) and dtype float32 holding NaN"),
    "inf tensor": (torch.full((3, 5, 6), float("inf")), ValueError, r"torch.Tensor of shape \(3, 5, 6\) and "
                                                                    r"dtype torch.float32 holding NaN or inf"),
    "negative float": (np.full((5, 6, 3), -0.5), ValueError, r"Negative pixel values \(min -0.5\).*float64"),
    "negative int": (np.full((5, 6), -1, np.int16), ValueError, r"Negative pixel values.*dtype int16"),
    "normalised tensor": (torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0)), ValueError,
                          r"Negative pixel values.*already normalised"),
    "float above 255": (np.full((5, 6), 256.0, np.float32), ValueError, r"above 255 \(max 256\).*float32"),
    "int above 16 bits": (np.full((5, 6), 70000, np.int32), ValueError, r"up to 70000.*dtype int32"),
    "empty array": (np.zeros((0, 6, 3), np.uint8), ValueError, r"Empty image: got a numpy array of shape "
                                                              r"\(0, 6, 3\)"),
    "empty tensor": (torch.zeros(3, 5, 0), ValueError, r"Empty image: got a torch.Tensor of shape \(3, 5, 0\)"),
    "empty PIL": (Image.new("RGB", (0, 5)), ValueError, r"Empty image: got a PIL image of mode 'RGB' and size 0x5"),
    "4-D batch": (np.zeros((2, 5, 6, 3), np.uint8), ValueError, r"shape \(2, 5, 6, 3\).*pass a list of images"),
    "1-D": (np.zeros(6, np.uint8), ValueError, r"must be 2-D .* shape \(6,\) and dtype uint8"),
    "object dtype": (np.zeros((5, 6), object), TypeError, r"shape \(5, 6\) and dtype object"),
    "complex tensor": (torch.zeros(5, 6, dtype=torch.complex64), TypeError, r"dtype torch.complex64"),
    "missing path": ("picture.png", ValueError, r"Cannot load the image 'picture\.png': it is no file, no "
                                                r"http\(s\) URL and no base64 image data"),
    "bytes": (b"\x89PNG\r\n", TypeError, r"type builtins.bytes.*bytes are not read"),
    "None": (None, TypeError, r"type builtins.NoneType"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_invalid_inputs_are_refused_by_name(image_processor, name):
    image, error, message = REFUSED[name]
    with pytest.raises(error, match=message):
        image_processor.preprocess([image])


def test_the_error_says_which_image(image_processor):
    with pytest.raises(ValueError, match=r"^Image 1: Negative pixel values"):
        image_processor.preprocess([RGB, -np.ones((5, 6))])


def test_an_image_file_is_turned_upright_and_closed(tmp_path):
    import warnings

    from processing.image_inputs_deem import load_image_source

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    path = tmp_path / "sideways.jpg"
    Image.new("RGB", (40, 20), (200, 0, 0)).save(path, exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)  # an unclosed file would warn when the image is dropped
        image = load_image_source(path)
        assert image.size == (20, 40) and image.getpixel((0, 0))[0] > 150
        del image
    plain = tmp_path / "plain.png"
    Image.new("L", (3, 2), 9).save(plain)
    image = load_image_source(plain)
    assert image.mode == "L" and image.size == (3, 2) and image.getpixel((2, 1)) == 9
