"""Your own data: arrays, tables and image folders, read as the built-in sets are.

:func:`load_file` returns the :class:`~pyro_vae.data.DatasetSplits` that
:func:`pyro_vae.data.load_dataset` returns, so a script and ``pyro-vae train --data PATH`` read
a file the same way (:mod:`pyro_vae.datafiles.load`); :mod:`~pyro_vae.datafiles.tables` reads
CSV through pandas, :mod:`~pyro_vae.datafiles.images` folders of images through PIL.
"""

from pyro_vae.datafiles.errors import DataFileError
from pyro_vae.datafiles.load import (
    SUFFIXES,
    FileArrays,
    Transforms,
    check_like,
    decide_transforms,
    load_file,
    read_file,
    sha256,
)

__all__ = [
    "DataFileError",
    "FileArrays",
    "SUFFIXES",
    "Transforms",
    "check_like",
    "decide_transforms",
    "load_file",
    "read_file",
    "sha256",
]
