"""A folder of PNG/JPEG images, one subfolder per class as torchvision's ``ImageFolder``.

Images directly in the folder (no subfolders) are read unlabelled. Every image is read with
PIL, as grey levels when all of them are grey and as RGB otherwise, resized to ``image_size``
when it is given; without it every image must have one size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyro_vae.datafiles.errors import DataFileError

__all__ = ["IMAGE_SUFFIXES", "image_files", "read_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (itself and one level of subfolders), sorted.

    Parameters
    ----------
    folder : Path

    Returns
    -------
    list of Path
    """
    found = [*folder.glob("*"), *folder.glob("*/*")]
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image_folder(folder: Path, image_size=None):
    """The images of ``folder`` as an array, with their labels and class names.

    Parameters
    ----------
    folder : Path
        Class subfolders of images, or images.
    image_size : tuple of (int, int), optional
        (H, W) to resize every image to.

    Returns
    -------
    x : numpy.ndarray of shape (N, H, W) or (N, H, W, 3)
        float32 in [0, 1].
    y : numpy.ndarray of shape (N,) or None
        The class of each image (the sorted subfolder names' order), None without subfolders.
    shape : tuple of int
        (H, W) or (H, W, 3).
    classes : list of str

    Raises
    ------
    DataFileError
        No images, an image PIL cannot read, images of mixed sizes without ``image_size``.
    """
    from PIL import Image, UnidentifiedImageError  # only when images are read

    files = image_files(folder)
    if not files:
        raise DataFileError(
            f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}, in class subfolders)"
        )
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                images.append(image.copy())
        except (OSError, UnidentifiedImageError) as err:
            raise DataFileError(f"cannot read the image {file}: {err}") from None
    grey = all(image.mode in _GREY_MODES for image in images)
    images = [image.convert("L" if grey else "RGB") for image in images]
    if image_size is not None:
        h, w = image_size
        images = [image.resize((w, h)) for image in images]
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        (w1, h1), (w2, h2) = sorted(sizes)[:2]
        raise DataFileError(
            f"{folder} holds images of {len(sizes)} sizes ({h1}x{w1}, {h2}x{w2}, ...); pass "
            "--image-size H,W to resize them to one"
        )
    x = np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images])
    subfolders = [file.parent.name for file in files if file.parent != folder]
    if not subfolders:
        return x, None, tuple(x.shape[1:]), []
    if len(subfolders) != len(files):
        raise DataFileError(f"{folder}: images both in class subfolders and beside them")
    classes = sorted(set(subfolders))
    y = np.array([classes.index(name) for name in subfolders], dtype=np.int64)
    return x, y, tuple(x.shape[1:]), classes
