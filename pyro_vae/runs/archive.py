"""Every report kept: a later ``evaluate``, ``certify`` or ``diagnose`` never destroys one.

Each command writes its report and figures into a folder of its own, named by the command's
estimator and settings (:func:`evaluation_name`, :func:`certification_name`,
:func:`diagnosis_name`), e.g. ``evaluations/is-L5000-all-b100-seed0/`` in the run folder. Then
:func:`show_latest` copies them to where the latest report has always been (``evaluation.json``,
``certification.json``, ``diagnostics.json`` and ``figures/``), so what reads those files keeps
working; the copy names its folder (``kept_in``). The same command again rewrites its own
folder with the same result (bit for bit but the seconds it took); a command with other
settings, a 10-point check after a 1,000-point AIS run, writes another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyro_vae.infer.runtime.files import atomic_write

__all__ = [
    "KEPT_IN",
    "LATEST_FIGURES",
    "certification_name",
    "diagnosis_name",
    "evaluation_name",
    "kept_folder",
    "kept_in",
    "keeping",
    "show_latest",
]

KEPT_IN = {"evaluate": "evaluations", "certify": "certifications", "diagnose": "diagnoses"}
"""The folder of the run folder where each command keeps its reports, one subfolder each."""

LATEST_FIGURES = {
    "evaluate": ("khat.png", "elbo_vs_logpx.png", "ais_vs_is.png"),
    "certify": ("bdmc.png",),
    "diagnose": ("forest_guide_vs_nuts.png", "pair_guide_vs_nuts.png", "kl_per_dimension.png"),
}
"""The figures each command may draw: in ``figures/``, those of its latest report only."""


def evaluation_name(
    estimator: str,
    *,
    num_samples: int,
    num_points: int | None,
    batch_size: int,
    seed: int,
    ks: list[int] | None = None,
    ais=None,
) -> str:
    """The folder name of an ``evaluate`` report: its estimator and every setting it depends on.

    Parameters
    ----------
    estimator : {"is", "ais", "auto"}
        The estimator trusted.
    num_samples, num_points, batch_size, seed
        ``--num-samples`` (L), ``--num-points`` (None: all), ``--batch-size`` (the chunks the
        draws are made in), ``--seed``.
    ks : list of int, optional
        ``--iwae-k`` when given.
    ais : AISSettings, optional
        The AIS settings (named unless ``estimator`` is "is").

    Returns
    -------
    str
        E.g. ``is-L1000-n1000-b100-seed0`` or ``auto-L5000-all-b100-seed0-S16-T100-K10-sigmoid``.
    """
    points = "all" if num_points is None else f"n{num_points}"
    parts = [estimator, f"L{num_samples}", points, f"b{batch_size}", f"seed{seed}"]
    if ks is not None:
        parts.append("k" + ",".join(map(str, ks)))
    if estimator != "is":
        parts += _ais_parts(ais)
    return "-".join(parts)


def certification_name(*, num_points: int, steps: list[int], seed: int, ais) -> str:
    """The folder name of a ``certify`` report, e.g. ``n100-T10,100,1000-seed0-S16-K10-sigmoid``.

    Parameters
    ----------
    num_points, steps, seed
        ``--num-points``, ``--steps`` (the T, in order), ``--seed``.
    ais : AISSettings
        The other AIS settings (its ``num_steps`` is not used).

    Returns
    -------
    str
    """
    parts = [f"n{num_points}", "T" + ",".join(map(str, steps)), f"seed{seed}"]
    return "-".join(parts + _ais_parts(ais, with_steps=False))


def diagnosis_name(
    *,
    num_points: int | None,
    gap_points: int,
    gap_steps: int,
    nuts_points: int,
    chains: int,
    warmup: int,
    draws: int,
    seed: int,
) -> str:
    """The folder name of a ``diagnose`` report, e.g. ``n1000-gap20x300-nuts2-c2-w200-d300-seed0``.

    Parameters
    ----------
    num_points, gap_points, gap_steps, nuts_points, chains, warmup, draws, seed
        ``diagnose``'s options of the same names.

    Returns
    -------
    str
    """
    points = "all" if num_points is None else f"n{num_points}"
    return (
        f"{points}-gap{gap_points}x{gap_steps}-nuts{nuts_points}-c{chains}-w{warmup}-d{draws}"
        f"-seed{seed}"
    )


def _ais_parts(ais, with_steps: bool = True) -> list[str]:
    """S chains, T steps, K leapfrog steps, the schedule: the parts of a name AIS adds."""
    steps = [f"T{ais.num_steps}"] if with_steps else []
    return [f"S{ais.num_chains}", *steps, f"K{ais.num_leapfrog}", ais.schedule]


def kept_in(command: str, name: str) -> str:
    """The kept report's folder relative to the run folder, e.g. ``evaluations/NAME``.

    Parameters
    ----------
    command : {"evaluate", "certify", "diagnose"}
        The command.
    name : str
        From :func:`evaluation_name` and its kin.

    Returns
    -------
    str
        What the report's ``kept_in`` holds.
    """
    return f"{KEPT_IN[command]}/{name}"


def kept_folder(run_dir: str | Path, command: str, name: str) -> Path:
    """Where ``command`` keeps the report called ``name`` in ``run_dir``.

    Parameters
    ----------
    run_dir : str or Path
        The run folder.
    command : {"evaluate", "certify", "diagnose"}
        The command.
    name : str
        From :func:`evaluation_name` and its kin.

    Returns
    -------
    Path
        ``run_dir / kept_in(command, name)`` (it need not exist).
    """
    return Path(run_dir) / kept_in(command, name)


@contextmanager
def keeping(run_dir: str | Path, command: str, name: str) -> Iterator[Path]:
    """The folder a report is written into: created, and removed again if the writing fails.

    Only the folders this call created, and only while empty, are removed on failure: a
    failed command leaves the run folder as it was (a folder already there stays).

    Parameters
    ----------
    run_dir, command, name
        As :func:`kept_folder`.

    Yields
    ------
    Path
        The folder (it exists).
    """
    folder = kept_folder(run_dir, command, name)
    created = [p for p in (folder.parent, folder) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for path in reversed(created):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise


def show_latest(folder: Path, run_dir: str | Path, command: str) -> list[Path]:
    """Copy a kept report to the run folder's top level: the latest, where it always was.

    Reports (``.json``, ``.csv``) go to ``run_dir``, figures (``.png``) to ``run_dir/figures``;
    a figure the previous report of ``command`` drew and this one did not (``ais_vs_is.png``
    after an ``--estimator is`` run) is removed there, so ``figures/`` shows one report.
    It stays in that report's own folder. Each copy is atomic.

    Parameters
    ----------
    folder : Path
        The report's folder (:func:`keeping`).
    run_dir : str or Path
        The run folder.
    command : {"evaluate", "certify", "diagnose"}
        The command that wrote it.

    Returns
    -------
    list of Path
        The copies written.
    """
    run_dir = Path(run_dir)
    figures = run_dir / "figures"
    figures.mkdir(exist_ok=True)
    copies = []
    for source in sorted(p for p in folder.iterdir() if p.is_file()):
        target = (figures if source.suffix == ".png" else run_dir) / source.name
        data = source.read_bytes()
        copies.append(atomic_write(target, lambda f, data=data: f.write(data), binary=True))
    for stale in LATEST_FIGURES[command]:
        if not (folder / stale).exists():
            (figures / stale).unlink(missing_ok=True)
    return copies
