"""``python -m pyro_vae``: the version, and where the documentation is."""

from pathlib import Path

from pyro_vae import __version__
from pyro_vae.cli_parser import DOCS_BUILD, DOCS_POINTER

ROOT = Path(__file__).resolve().parent.parent
"""The repository root of a source checkout (where ``docs/conf.py`` is, if it is one)."""


def docs_lines(root: Path = ROOT) -> list[str]:
    """What ``python -m pyro_vae`` prints: the version, the docs, and where they are built.

    Parameters
    ----------
    root : pathlib.Path
        The repository root to look for ``docs/`` in (default: the one this package sits in).

    Returns
    -------
    list of str
        The lines, without newlines.
    """
    lines = [f"pyro_vae {__version__}", DOCS_POINTER]
    index = root / "docs" / "_build" / "html" / "index.html"
    if index.is_file():
        lines.append(f"Built here: {index}")
    elif (root / "docs" / "conf.py").is_file():
        lines.append(f"Not built yet here: cd {root} && {DOCS_BUILD}")
    else:
        lines.append("This install has no docs/ folder: build them from a clone of the repository.")
    tutorials = root / "docs" / "tutorials"
    if tutorials.is_dir():
        lines.append(f"Tutorials (notebooks to open in Jupyter): {tutorials}")
    lines.append("The command line: pyro-vae --help")
    return lines


def main() -> None:
    """Print :func:`docs_lines`."""
    print("\n".join(docs_lines()))


if __name__ == "__main__":
    main()
