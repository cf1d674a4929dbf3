"""Every report kept: a later ``evaluate``, ``certify``, ``diagnose`` or ``calibrate`` never
destroys one.

Each command writes its report and figures into a folder of its own, named by the command's
estimator and settings (:func:`evaluation_name`, :func:`certification_name`,
:func:`diagnosis_name`) and the epoch of the model, e.g.
``evaluations/is-L5000-all-b100-seed0-epoch50/`` in the run folder. Then
:func:`show_latest` copies them to where the latest report has always been (``evaluation.json``,
``certification.json``, ``diagnostics.json`` and ``figures/``), so what reads those files keeps
working; the copy names its folder (``kept_in``). The same command again rewrites its own
folder with the same result (bit for bit but the seconds it took); a command with other
settings, a 10-point check after a 1,000-point AIS run, writes another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from pyro_vae.infer.runtime.files import atomic_write
from pyro_vae.runs.folders import KEPT_IN, Run, check_writable

__all__ = [
    "LATEST_FIGURES",
    "REPORT_NAMES",
    "calibration_name",
    "certification_name",
    "check_keepable",
    "diagnosis_name",
    "evaluation_name",
    "keep_report",
    "kept_folder",
    "kept_in",
    "keeping",
    "report_name",
    "show_latest",
]

LATEST_FIGURES = {
    "evaluate": ("khat.png", "elbo_vs_logpx.png", "ais_vs_is.png"),
    "certify": ("bdmc.png",),
    "diagnose": ("forest_guide_vs_nuts.png", "pair_guide_vs_nuts.png", "kl_per_dimension.png"),
    "calibrate": ("sbc_ecdf.png", "coverage.png", "reliability.png"),
}
"""The figures each command may draw: in ``figures/``, those of its latest report only."""


def evaluation_name(options: Mapping) -> str:
    """The folder name of an ``evaluate`` report: its estimator and every setting it depends on.

    Parameters
    ----------
    options : Mapping
        ``evaluate``'s options by name: ``estimator``, ``num_samples`` (L), ``num_points``
        (None: all), ``batch_size`` (the chunks the draws are made in), ``seed``, ``iwae_k``
        (None: the default k) and, unless the estimator is "is", ``ais_chains``,
        ``ais_steps``, ``ais_leapfrog``, ``ais_schedule``; ``processes``, the torchrun
        processes that shared the points (named when above 1: each draws its own).

    Returns
    -------
    str
        E.g. ``is-L1000-n1000-b100-seed0`` or ``auto-L5000-all-b100-seed0-S16-T100-K10-sigmoid``.
    """
    o = options
    points = "all" if o["num_points"] is None else f"n{o['num_points']}"
    parts = [o["estimator"], f"L{o['num_samples']}", points, f"b{o['batch_size']}"]
    parts.append(f"seed{o['seed']}")
    if o["iwae_k"] is not None:
        parts.append("k" + ",".join(map(str, o["iwae_k"])))
    if o["estimator"] != "is":
        parts += [f"S{o['ais_chains']}", f"T{o['ais_steps']}", f"K{o['ais_leapfrog']}"]
        parts.append(o["ais_schedule"])
    if o.get("processes", 1) > 1:
        parts.append(f"P{o['processes']}")
    return "-".join(parts)


def certification_name(options: Mapping) -> str:
    """The folder name of a ``certify`` report, e.g. ``n100-T10,100,1000-seed0-S16-K10-sigmoid``.

    Parameters
    ----------
    options : Mapping
        ``certify``'s options by name: ``num_points``, ``steps`` (the T, in order), ``seed``,
        ``ais_chains``, ``ais_leapfrog``, ``ais_schedule``.

    Returns
    -------
    str
    """
    o = options
    steps = "T" + ",".join(map(str, o["steps"]))
    parts = [f"n{o['num_points']}", steps, f"seed{o['seed']}", f"S{o['ais_chains']}"]
    return "-".join([*parts, f"K{o['ais_leapfrog']}", o["ais_schedule"]])


def diagnosis_name(options: Mapping) -> str:
    """The folder name of a ``diagnose`` report, e.g. ``n1000-gap20x300-nuts2-c2-w200-d300-seed0``.

    Parameters
    ----------
    options : Mapping
        ``diagnose``'s options by name: ``num_points``, ``gap_points``, ``gap_steps``,
        ``nuts_points``, ``chains``, ``warmup``, ``draws``, ``seed``.

    Returns
    -------
    str
    """
    o = options
    points = "all" if o["num_points"] is None else f"n{o['num_points']}"
    return (
        f"{points}-gap{o['gap_points']}x{o['gap_steps']}-nuts{o['nuts_points']}-c{o['chains']}"
        f"-w{o['warmup']}-d{o['draws']}-seed{o['seed']}"
    )


def calibration_name(options: Mapping) -> str:
    """The folder name of a ``calibrate`` report, e.g. ``n1000-L99-seed0``.

    Parameters
    ----------
    options : Mapping
        ``calibrate``'s options by name: ``num_simulations``, ``num_draws``, ``seed``.

    Returns
    -------
    str
    """
    return f"n{options['num_simulations']}-L{options['num_draws']}-seed{options['seed']}"


REPORT_NAMES = {
    "evaluate": evaluation_name,
    "certify": certification_name,
    "diagnose": diagnosis_name,
    "calibrate": calibration_name,
}
"""Each command's name of a report, from its options."""


def report_name(command: str, options: Mapping, epoch: int | None = None) -> str:
    """The folder name of ``command``'s report (:data:`REPORT_NAMES`), and the model's epoch.

    Parameters
    ----------
    command : {"evaluate", "certify", "diagnose"}
        The command.
    options : Mapping
        Its options by name (``vars(args)``).
    epoch : int, optional
        The epoch the run's checkpoint holds: a resumed run is another model, whose reports
        do not replace the earlier ones (None: not named).

    Returns
    -------
    str
        E.g. ``is-L1000-n1000-b100-seed0-epoch50``.
    """
    name = REPORT_NAMES[command](options)
    return name if epoch is None else f"{name}-epoch{epoch}"


def kept_in(command: str, name: str) -> str:
    """The kept report's folder relative to the run folder, e.g. ``evaluations/NAME``.

    Parameters
    ----------
    command : {"evaluate", "certify", "diagnose"}
        The command.
    name : str
        :func:`report_name`.

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
    command, name
        As :func:`kept_in`.

    Returns
    -------
    Path
        ``run_dir / kept_in(command, name)`` (it need not exist).
    """
    return Path(run_dir) / kept_in(command, name)


def check_keepable(run: Run, command: str, options: Mapping) -> str:
    """The name of ``command``'s report; refused, before the work, where it cannot be written.

    Parameters
    ----------
    run : Run
        The loaded run (its folder, and the epoch its checkpoint holds).
    command : {"evaluate", "certify", "diagnose"}
        The command.
    options : Mapping
        Its options by name (``vars(args)``).

    Returns
    -------
    str
        :func:`report_name`.

    Raises
    ------
    OSError
        One line naming the folder where the report or its latest copy cannot go
        (:func:`pyro_vae.runs.folders.check_writable`).
    """
    epoch = run.history[-1]["epoch"] if run.history else 0
    name = report_name(command, options, epoch)
    check_writable(kept_folder(run.run_dir, command, name))
    check_writable(Path(run.run_dir) / "figures")
    return name


def keep_report(
    run_dir: str | Path, command: str, name: str, write: Callable[[Path], list[Path]]
) -> tuple[Path, str]:
    """Write a report into its own folder (:func:`keeping`), then show it on top (latest).

    Parameters
    ----------
    run_dir, command, name
        As :func:`kept_folder`.
    write : callable
        ``write(folder)`` writes the report's files into ``folder`` and returns their paths.

    Returns
    -------
    folder : Path
        Where the report is kept.
    line : str
        The line that says so: ``wrote FOLDER/: FILES; the latest, copied to RUN_DIR/ and
        figures/``.
    """
    with keeping(run_dir, command, name) as folder:
        written = write(folder)
    show_latest(folder, run_dir, command)
    names = ", ".join(p.name for p in written)
    return folder, f"wrote {folder}/: {names}; the latest, copied to {run_dir}/ and figures/"


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
