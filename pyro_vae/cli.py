"""The ``pyro-vae`` command: train a VAE, then ask how good it is.

    pyro-vae train --dataset mnist5k --epochs 10 --out runs/vae
    pyro-vae evaluate runs/vae --num-samples 5000 [--estimator auto]
    pyro-vae certify runs/vae --num-points 100 --steps 10,100,1000
    pyro-vae diagnose runs/vae
    pyro-vae calibrate runs/vae --num-simulations 1000 --num-draws 99

``--model cvae`` trains the conditional VAE p(x|y) on images with their labels (evaluated as
log p(x|y) with the test labels); ``--model m2 --labels-per-class N`` the semi-supervised M2 on
N labelled images per class and the rest unlabelled (evaluated as log p(x), and by the test
accuracy of its classifier q(y|x)).

Every log-likelihood, ELBO and NLL printed is per datapoint, in nats, and names its split.
Every failure is one line on stderr and exit status 2; nothing already on disk is changed by a
command that fails before it starts training, and a new run that fails or is interrupted (Ctrl-C
or SIGTERM: one line, exit status 130 or 143) before its first epoch is saved is removed. A run
stopped later keeps its last complete epoch, and the line says how to continue it.

This module parses (:mod:`pyro_vae.cli_parser`), calls :mod:`pyro_vae.runs`'s recipes and
prints; the rules (which options make a run, how a model is built, what a report holds) are there.

Size: one short function per command (parse -> recipe -> print) with its docstring, and the
one-line error handling they share in :func:`main`; split, the commands would each repeat that
handling. The commands that use a trained run on a file (``encode``, ``sample``,
``evaluate --data``) are in :mod:`pyro_vae.cli_usage`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from pyro_vae.cli_parser import build_parser, given_options
from pyro_vae.cli_usage import cmd_encode, cmd_sample, cmd_score_file
from pyro_vae.infer.evidence.ais import AISSettings
from pyro_vae.infer.runtime.devices import resolve_device, set_threads
from pyro_vae.infer.runtime.distributed import barrier, join, leave
from pyro_vae.infer.runtime.files import write_json
from pyro_vae.runs import (
    ONE_LINE_ERRORS,
    RunProgress,
    TrainingInterrupted,
    architecture,
    check_options,
    check_resume,
    check_writable,
    clear_run,
    data_config,
    diagnose_run,
    diagnosis_figures,
    diagnosis_text,
    evaluate_run,
    evaluation_figures,
    evaluation_table,
    existing_run_files,
    final_scores,
    iwae_ks,
    load_run,
    missing_root,
    new_config,
    record_resume,
    remove_leftovers,
    run_data,
    run_figures,
    save_diagnosis,
    sigterm_as_interrupt,
    training_recipe,
    write_config,
)
from pyro_vae.runs.archive import check_keepable, keep_report, kept_in
from pyro_vae.runs.calibration import (
    calibrate_run,
    calibration_table,
    check_calibration_options,
    save_calibration,
)
from pyro_vae.runs.certified import certification_table, certify_run
from pyro_vae.runs.figures import certification_figure
from pyro_vae.runs.models import model_kind
from pyro_vae.runs.own_data import adopt_decisions, data_line

__all__ = ["build_parser", "cmd_certify", "cmd_diagnose", "cmd_evaluate", "cmd_train", "main"]


def _silent(*args) -> None:
    """``print`` that prints nothing (``--quiet``, and every rank but 0)."""


# --- train -------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    """``pyro-vae train``: check everything, then train, report and draw.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_parser`, with ``given`` (the options written).

    Returns
    -------
    int
        0.

    Raises
    ------
    OSError, ValueError, CheckpointError, TrainingDivergedError, PeerLostError
        Each becomes one line on stderr and exit status 2 (:func:`main`); one that comes
        after the folder was written says what became of the run (:class:`RunProgress`).
    TrainingInterrupted
        On Ctrl-C or SIGTERM: one line, exit status 130 or 143.
    """
    out = Path(args.out)
    options, config, done = _checked_options(args, out)
    set_threads(options["threads"])
    # an absent device fails before the data are loaded; under torchrun every rank joins here
    ranks, _ = join(resolve_device(options["device"]))
    say = _silent if options["quiet"] or not ranks.is_main else print  # rank 0 speaks for all
    barrier()  # every rank has checked the folder before rank 0 changes it
    data_options = data_config(options)  # the recipe below changes no data option
    data = run_data(data_options, download=options["download"], flags=True)
    options, data_options = adopt_decisions(options, data_options, data)  # a file's, said once
    if data_line(data):
        say(data_line(data))
    recipe = training_recipe(options, data)  # refuses too many labels per class
    options = recipe.options  # M2's alpha filled in
    # a failure or Ctrl-C from here on removes a new run that saved no epoch, else names it
    progress = RunProgress(out, done, config is None, missing_root(out), writes=ranks.is_main)
    with progress.guard():
        if ranks.is_main:
            remove_leftovers(out)  # temporary files of writes killed mid-way (kill -9)
        if config is None:  # a new run (or --overwrite): the folder is written from scratch
            arch = architecture(recipe.model)
            config = new_config(data_options, options["model"], arch, options)
            if ranks.is_main:
                clear_run(out)
                write_config(out, config)
        else:  # recorded once the first new epoch is safely on disk
            config = record_resume(config, options, done)
        segment = len(config["resumes"])

        def on_epoch_end(record: dict) -> None:
            progress.epoch = record["epoch"]  # its checkpoint is on disk: first, then the rest
            if record["epoch"] == done + 1 and segment > 0:
                write_config(out, config)

        _say_start(say, recipe, data, out, done)
        path = recipe.step_path(config, done, say, out if ranks.is_main else None)  # said, kept
        result = recipe.train(out, options["resume"], on_epoch_end, {"segment": segment}, path)
        progress.trained = True
        if not ranks.is_main:
            return 0
        print(_result_line(recipe, data, result))
        history = result.history
        figures = run_figures(recipe.model, options["model"], data, history, out / "figures")
    say(f"figures in {out / 'figures'}: {', '.join(p.name for p in figures)}")
    evidence = model_kind(options["model"]).evidence_label
    say(f"next: pyro-vae evaluate {out}    (test {evidence} by importance sampling)")
    return 0


def _checked_options(args, out: Path) -> tuple[dict, dict | None, int]:
    """Every check of ``train`` that needs no data: options, the folder, the stored run.

    Returns the options (a resume's stored values filled in), the stored config (None for a
    new run) and the epochs already done.
    """
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: pass one")
    if not str(args.out).strip():  # Path("") is the current folder: never write a run there
        raise ValueError("--out must name a run folder, got an empty path")
    check_writable(out)
    existing = existing_run_files(out)
    options, config, done = vars(args), None, 0
    if args.resume:
        options, config, done = check_resume(options, args.given, out)
    options = check_options(options, args.given)
    if not args.resume and existing and not args.overwrite:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(existing)}); pass --resume "
            "to continue it or --overwrite to replace it"
        )
    return options, config, done


def _say_start(say, recipe, data, out: Path, done: int) -> None:
    """The line that opens a run (and the objective's, when it is not a plain loss)."""
    options = recipe.options
    what = (
        f"{options['likelihood']} {model_kind(options['model']).title} {data.train.data_dim}-"
        f"{'-'.join(map(str, options['hidden']))}-"
    )
    labelled, per_class = recipe.num_labelled, options["labels_per_class"]
    labels_note = f", {labelled:,} of them labelled ({per_class} per class)" if labelled else ""
    say(
        f"{'resuming' if done else 'training'} a {what}{options['latent']} on "
        f"{data.name} ({data.sizes()}{labels_note}) -> {out}"
        + (f", from epoch {done} to {options['epochs']}" if done else "")
    )
    if not isinstance(recipe.loss, str):
        say(f"objective: {recipe.loss!r}; the history records it and the true -ELBO")


def _result_line(recipe, data, result) -> str:
    """The line ``train`` ends with: train, validation and test -ELBO (and M2's accuracy)."""
    kind, final = recipe.options["model"], result.final
    scores = final_scores(recipe.model, data, kind)
    test_loss = scores["test_loss"]
    bits = data.train.data_dim * math.log(2)
    val_loss = final.get("val_loss")
    val_text = f"validation -ELBO {val_loss:.2f}, " if val_loss is not None else ""
    accuracy = ""
    if scores["accuracy"] is not None:
        accuracy = f"; test accuracy of q(y|x) {scores['accuracy']:.4f}"
    return (
        f"after {final['epoch']} epochs: train -ELBO {final['train_loss']:.2f}, {val_text}"
        f"test -ELBO {test_loss:.2f} nats/datapoint ({test_loss / bits:.4f} bits/dim)"
        + (" given the labels" if model_kind(kind).conditional else "")
        + accuracy
        + (" (stopped early)" if result.stopped_early else "")
    )


# --- evaluate, diagnose ------------------------------------------------------------------------


def cmd_evaluate(args) -> int:
    """``pyro-vae evaluate``: score a run on its test split, print the tables, keep the report.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_parser`.

    Returns
    -------
    int
        0.

    Raises
    ------
    OSError, ValueError, CheckpointError
        Each becomes one line on stderr and exit status 2 (:func:`main`).
    """
    if args.data is not None:  # a file of your own, scored point by point
        return cmd_score_file(args, ais_settings(args))
    set_threads(args.threads)
    ranks, device = join(resolve_device(args.device))  # under torchrun: sharded evaluation
    ks = iwae_ks(args.iwae_k, args.num_samples)
    run = load_run(args.run_dir, device=device)
    # before the work, not after; the draws depend on the processes that share the points
    name = check_keepable(run, "evaluate", {**vars(args), "processes": ranks.world_size})
    evaluation = evaluate_run(
        run,
        ks=ks,
        num_samples=args.num_samples,
        num_points=args.num_points,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        progress=not args.quiet and ranks.is_main,
        estimator=args.estimator,
        ais=ais_settings(args),
    )
    if not ranks.is_main:  # every rank holds the gathered result; rank 0 reports it
        return 0
    print(evaluation_table(evaluation.report))  # first: nothing computed is lost if a write fails
    report = {**evaluation.report, "kept_in": kept_in("evaluate", name), "points": evaluation.rows}

    def write(folder: Path) -> list[Path]:  # a row per test point, then the figures
        written = write_json(folder / "evaluation.json", report)
        return [written, *evaluation_figures(evaluation, folder)]

    (_silent if args.quiet else print)(keep_report(run.run_dir, "evaluate", name, write)[1])
    return 0


def ais_settings(args) -> AISSettings:
    """The AIS settings of ``evaluate``'s or ``certify``'s options (``certify`` sets T itself)."""
    steps = getattr(args, "ais_steps", AISSettings.num_steps)
    return AISSettings(args.ais_chains, steps, args.ais_leapfrog, args.ais_schedule)  # S, T, L


def cmd_certify(args) -> int:
    """``pyro-vae certify``: BDMC bounds on data drawn from a run's model; table, report, figure.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_parser`.

    Returns
    -------
    int
        0.
    """
    set_threads(args.threads)
    ranks, device = join(resolve_device(args.device))  # under torchrun: points sharded
    run = load_run(args.run_dir, device=device)
    name = check_keepable(run, "certify", vars(args))  # certifications/NAME/
    report = certify_run(
        run,
        num_points=args.num_points,
        steps=args.steps,  # the parser refuses a repeated or decreasing T
        settings=ais_settings(args),
        seed=args.seed,
        device=device,
        progress=not args.quiet and ranks.is_main,
    )
    if not ranks.is_main:  # every rank holds the gathered bounds; rank 0 reports them
        return 0
    print(certification_table(report))
    report = {**report, "kept_in": kept_in("certify", name)}

    def write(folder: Path) -> list[Path]:
        written = write_json(folder / "certification.json", report)
        return [written, certification_figure(report, folder)]

    (_silent if args.quiet else print)(keep_report(run.run_dir, "certify", name, write)[1])
    return 0


def cmd_diagnose(args) -> int:
    """``pyro-vae diagnose``: posterior diagnostics of a run; prints, then keeps the report.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_parser`.

    Returns
    -------
    int
        0.

    Raises
    ------
    OSError, ValueError, CheckpointError
        Each becomes one line on stderr and exit status 2 (:func:`main`).
    """
    set_threads(args.threads)
    run = load_run(args.run_dir)
    name = check_keepable(run, "diagnose", vars(args))  # diagnoses/NAME/
    diagnosis = diagnose_run(
        run,
        num_points=args.num_points,
        gap_points=args.gap_points,
        gap_steps=args.gap_steps,
        nuts_points=args.nuts_points,
        chains=args.chains,
        warmup=args.warmup,
        draws=args.draws,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(diagnosis_text(diagnosis))  # first: nothing computed is lost if a write fails

    def write(folder: Path) -> list[Path]:  # the report, the ArviZ summaries, the figures
        figures = diagnosis_figures(diagnosis.idatas, diagnosis.kl, diagnosis.variances, folder)
        return [*save_diagnosis(diagnosis, folder, kept_in("diagnose", name)), *figures]

    (_silent if args.quiet else print)(keep_report(run.run_dir, "diagnose", name, write)[1])
    if not args.quiet:
        print(
            f"next: pyro-vae calibrate {run.run_dir}    (is the guide calibrated over data "
            "simulated from the model?)"
        )
    return 0


def cmd_calibrate(args) -> int:
    """``pyro-vae calibrate``: simulation-based calibration of a run's guide; table, report,
    figures. Bad settings fail before the run is loaded; nothing is written before the table.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed by :func:`build_parser`.

    Returns
    -------
    int
        0.
    """
    check_calibration_options(args.num_simulations, args.num_draws)
    set_threads(args.threads)
    device = resolve_device(args.device)
    run = load_run(args.run_dir, device=device)
    name = check_keepable(run, "calibrate", vars(args))  # calibrations/NAME/
    calibration = calibrate_run(
        run,
        num_simulations=args.num_simulations,
        num_draws=args.num_draws,
        seed=args.seed,
        device=device,
        progress=not args.quiet,
    )
    print(calibration_table(calibration.report))  # first: nothing computed is lost

    def write(folder: Path) -> list[Path]:
        return save_calibration(calibration, folder, kept_in("calibrate", name))

    (_silent if args.quiet else print)(keep_report(run.run_dir, "calibrate", name, write)[1])
    return 0


# --- main --------------------------------------------------------------------------------------

COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "certify": cmd_certify,
    "diagnose": cmd_diagnose,
    "encode": cmd_encode,
    "sample": cmd_sample,
    "calibrate": cmd_calibrate,
}


def _one_line(err: BaseException) -> str:
    text = str(err).split("\nTrace Shapes:")[0]  # Pyro's dump of the trace, in a table
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run ``pyro-vae``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0, 2 after a one-line error on stderr, 130 after Ctrl-C or 143 after
        SIGTERM (one line: for ``train``, the epoch it stopped after and how to continue it).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.given = given_options(args, argv)
    try:
        with sigterm_as_interrupt():  # kill, a scheduler, torchrun stopping the other ranks
            status = COMMANDS[args.command](args)
            leave(wait=True)  # under torchrun rank 1 may finish first, while rank 0 writes
        return status
    except ONE_LINE_ERRORS as err:
        print(f"pyro-vae {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, TrainingInterrupted) as err:  # 128 + SIGINT, or + SIGTERM
        print(f"pyro-vae {args.command}: {_one_line(err) or 'interrupted'}", file=sys.stderr)
        return getattr(err, "status", 130)
    finally:
        leave()  # after a failure (nothing once left above)


if __name__ == "__main__":
    sys.exit(main())
