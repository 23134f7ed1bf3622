# Copyright 2025 The hf_kd authors. Licensed under the Apache License, Version 2.0.
"""Image processor of the hf_kd reference models (MNIST and CIFAR-10 classifiers).

This file is copied next to `preprocessor_config.json` by `save_pretrained` (see `register_for_auto_class`), so a
saved model's processor loads with `trust_remote_code=True` where `hf_kd` is not installed: it imports only `numpy`,
`PIL` and `transformers`.
"""

import numpy as np
import PIL.Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack


class HfKdImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_convert_grayscale (`bool`, *optional*, defaults to `self.do_convert_grayscale`):
        Whether to convert the images to one grayscale channel (PIL's `"L"` mode, ITU-R 601-2 luma).
    """

    do_convert_grayscale: bool | None


class HfKdImageProcessor(PilBackend):
    r"""
    Turns raw images into the `pixel_values` of the hf_kd reference models: convert to grayscale (one channel) or RGB
    (three channels), resize, rescale to [0, 1] and normalise per channel. Returns `pixel_values` as a float32 array
    (or tensor, with `return_tensors`) of shape `(batch_size, num_channels, height, width)`.

    It exists because no `transformers` image processor produces one-channel images (the ones with a grayscale
    option, e.g. SuperPoint's, repeat the gray channel three times). The colour conversion and the resize run in PIL
    per image, the rescale and normalisation once on the stacked batch, so preprocessing a whole dataset with
    `Dataset.map(..., batched=True)` is quick.

    Use [`image_processor_for_preset`] for the processors of the reference presets.

    Args:
        do_convert_grayscale (`bool`, *optional*, defaults to `False`):
            Convert every image to a single grayscale channel. Exclusive with `do_convert_rgb`.
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Convert every image to three RGB channels (grayscale repeated, alpha dropped).
        do_resize (`bool`, *optional*, defaults to `True`):
            Resize the images to `size`.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 32, "width": 32}`):
            Output size, as `{"height": ..., "width": ...}`.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BILINEAR`):
            Resampling filter of the resize.
        do_rescale (`bool`, *optional*, defaults to `True`):
            Multiply the pixel values by `rescale_factor`.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            The rescale factor.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Subtract `image_mean` and divide by `image_std`, per channel.
        image_mean (`float` or `list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Per-channel means (one value, or one per output channel).
        image_std (`float` or `list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Per-channel standard deviations (one value, or one per output channel).
    """

    valid_kwargs = HfKdImageProcessorKwargs
    model_input_names = ["pixel_values"]

    do_convert_grayscale = False
    do_convert_rgb = True
    do_resize = True
    size = {"height": 32, "width": 32}
    resample = PILImageResampling.BILINEAR
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]

    def __init__(self, **kwargs: Unpack[HfKdImageProcessorKwargs]):
        super().__init__(**kwargs)

    def _validate_preprocess_kwargs(self, do_convert_grayscale=None, do_convert_rgb=None, **kwargs):
        if do_convert_grayscale and do_convert_rgb:
            raise ValueError("`do_convert_grayscale` and `do_convert_rgb` cannot both be True.")
        for unsupported in ("do_center_crop", "do_pad"):
            if kwargs.get(unsupported):
                raise ValueError(f"`{unsupported}` is not supported by {self.__class__.__name__}.")
        size = kwargs.get("size")
        if kwargs.get("do_resize") and (size is None or not (size.height and size.width)):
            raise ValueError(f"`size` must be given as {{'height': ..., 'width': ...}}, got {size}.")
        super()._validate_preprocess_kwargs(**kwargs)

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        # `transformers` only takes 3-dimensional arrays as single images; accept 2-dimensional (height, width)
        # grayscale arrays too, alone or in a list, as MNIST-like datasets store them.
        if getattr(images, "ndim", None) == 2:
            return [images]
        if isinstance(images, (list, tuple)) and len(images) > 0 and getattr(images[0], "ndim", None) == 2:
            return list(images)
        return super()._prepare_images_structure(images, expected_ndims=expected_ndims)

    def process_image(
        self,
        image,
        do_convert_grayscale: bool | None = None,
        do_convert_rgb: bool | None = None,
        do_resize: bool | None = None,
        size: SizeDict | None = None,
        resample: PILImageResampling | None = None,
        input_data_format=None,
        **kwargs,
    ) -> np.ndarray:
        """Convert one raw image to a `(channels, height, width)` array of the output mode and size."""
        if isinstance(image, PIL.Image.Image):
            # PIL does the colour conversion and resize in C on the small 8-bit image, the fast path for datasets.
            mode = "L" if do_convert_grayscale else "RGB" if do_convert_rgb else None
            if mode is not None and image.mode != mode:
                image = image.convert(mode)
            if do_resize and image.size != (size.width, size.height):
                image = image.resize((size.width, size.height), resample=resample)
            array = np.asarray(image)
            return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

        array = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format)
        num_channels = array.shape[0]
        if do_convert_grayscale and num_channels != 1:
            # PIL's `convert("L")` arithmetic (ITU-R 601-2 luma, 16-bit fixed point), so that an 8-bit array and the
            # same image as PIL give identical values.
            if array.dtype == np.uint8:
                red, green, blue = array[:3].astype(np.uint32)
                array = ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16).astype(np.uint8)[None]
            else:
                array = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), array[:3], axes=1)[None]
        elif do_convert_rgb and num_channels != 3:
            array = np.repeat(array, 3, axis=0) if num_channels == 1 else array[:3]
        if do_resize and array.shape[1:] != (size.height, size.width):
            array = self.resize(array, size=size, resample=resample)
        return array

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...] | None,
        image_std: float | tuple[float, ...] | None,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        if len({image.shape for image in images}) != 1:
            raise ValueError(
                "All images must have the same shape after conversion to stack them into `pixel_values`, got "
                f"{sorted({image.shape for image in images})}; set `do_resize=True`."
            )
        batch = np.stack(images)
        # One multiply-add over the whole batch: (x * rescale - mean) / std == x * scale + shift.
        scale = np.float32(rescale_factor if do_rescale else 1.0)
        shift = np.float32(0.0)
        if do_normalize:
            num_channels = batch.shape[1]
            mean = np.asarray(image_mean, dtype=np.float32).reshape(-1)
            std = np.asarray(image_std, dtype=np.float32).reshape(-1)
            for name, values in (("image_mean", mean), ("image_std", std)):
                if values.size not in (1, num_channels):
                    raise ValueError(f"`{name}` has {values.size} values but the images have {num_channels} channels.")
            scale = (scale / std).reshape(-1, 1, 1)
            shift = (-mean / std).reshape(-1, 1, 1)
        pixel_values = np.multiply(batch, scale, dtype=np.float32)
        pixel_values += shift
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


__all__ = ["HfKdImageProcessor"]
