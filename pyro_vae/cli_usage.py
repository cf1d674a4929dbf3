"""The commands that use a trained run: ``evaluate RUN --data PATH``, ``encode``, ``sample``.

    pyro-vae evaluate runs/vae --data new.csv [--estimator auto]
    pyro-vae encode runs/vae --data new.csv --out codes.npy
    pyro-vae sample runs/vae --num 64 --out samples.npy [--mean]

Parsed by :mod:`pyro_vae.cli_parser`; the work is :mod:`pyro_vae.runs.usage`'s, the files
:mod:`pyro_vae.runs.outputs`'. Every check (the run, the file, ``--out``) comes before anything
is written; a failure is one line and exit status 2 (:func:`pyro_vae.cli.main`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pyro_vae.infer.evidence.ais import AISSettings
from pyro_vae.infer.runtime.devices import resolve_device, set_threads
from pyro_vae.runs import check_writable, load_run, read_config
from pyro_vae.runs.outputs import check_out, save_png_grid, write_columns, write_scores
from pyro_vae.runs.own_data import stand_in_data
from pyro_vae.runs.usage import (
    encode_file,
    free_name,
    sample_run,
    score_file,
    scores_summary,
)

__all__ = ["cmd_encode", "cmd_sample", "cmd_score_file"]


def _open_run(args, stand_in: bool = False):
    """The threads set, the device resolved, the run loaded onto it: (run, device).

    ``stand_in``: the run holds :func:`~pyro_vae.runs.own_data.stand_in_data`, not its data.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would write the same files
        raise ValueError(f"{args.command} runs as one process; start it without torchrun")
    set_threads(args.threads)
    device = resolve_device(args.device)
    if stand_in:  # the model is all that is needed: the training data are not read again
        data = stand_in_data(read_config(args.run_dir))
        return load_run(args.run_dir, device=device, data=data), device
    return load_run(args.run_dir, device=device), device


def _chunked(args, device) -> dict:
    """The settings ``encode`` and ``sample`` share: label, chunk size, device, seed, bar."""
    return dict(
        label=args.label,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        progress=not args.quiet,
    )


def cmd_score_file(args, ais: AISSettings) -> int:
    """``pyro-vae evaluate RUN --data PATH``: per-point log p(x), scores CSV and histogram.

    Parameters
    ----------
    args : argparse.Namespace
        ``evaluate``'s options.
    ais : AISSettings
        From ``--ais-*``.

    Returns
    -------
    int
        0.
    """
    run, device = _open_run(args)
    figures = Path(run.run_dir) / "figures"
    check_writable(figures)
    scores = score_file(
        run,
        args.data,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        device=device,
        progress=not args.quiet,
        estimator=args.estimator,
        ais=ais,
    )
    s = scores_summary(scores)
    units = " (in the file's units: the standardization's log-Jacobian added)"
    print(
        f"{Path(args.data).name}: {len(scores.rows)} points, mean log p(x) {s['mean']:.3f} ± "
        f"{s['stderr']:.3f} nats per datapoint (the run's first {len(scores.reference)} "
        f"training points: {s['reference_mean']:.3f}); {s['unreliable']} points with IS "
        f"k-hat > 0.7" + (units if scores.log_jacobian else "")
    )
    stem = "scores_" + Path(args.data).stem
    table = write_scores(free_name(run.run_dir, stem, ".csv"), scores.rows)
    from pyro_vae.diagnostics.table_plots import save_score_histogram  # matplotlib: late

    figures.mkdir(parents=True, exist_ok=True)
    figure = save_score_histogram(
        scores.log_px,
        scores.reference,
        free_name(figures, Path(table).stem, ".png"),
        title=f"log p(x) of {Path(args.data).name} and of the training data",
    )
    if not args.quiet:
        print(f"wrote {table} (a row per point, in the file's order), figures/{figure.name}")
    return 0


def cmd_encode(args) -> int:
    """``pyro-vae encode``: the posterior mean and sd of z per point, written to ``--out``.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    int
        0.
    """
    out = check_out(args.out)
    run, device = _open_run(args, stand_in=True)
    mean, sd = encode_file(run, args.data, **_chunked(args, device))
    m = mean.shape[1]
    header = [f"z{j + 1}_mean" for j in range(m)] + [f"z{j + 1}_sd" for j in range(m)]
    write_columns(out, {"mean": mean, "sd": sd}, header)
    if not args.quiet:
        layout = "mean and sd" if out.suffix == ".pt" else f"columns: {m} means, then {m} sds"
        print(f"wrote {out}: {mean.shape[0]} points, the posterior of z ({layout})")
    return 0


def cmd_sample(args) -> int:
    """``pyro-vae sample``: draws through the decoder to ``--out`` (and a PNG grid of images).

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    int
        0.
    """
    out = check_out(args.out)
    run, device = _open_run(args, stand_in=True)
    x = sample_run(run, args.num, mean=args.mean, **_chunked(args, device))
    header = [f"x{j + 1}" for j in range(x[0].numel())]
    write_columns(out, {"x": x}, header)
    written = [out]
    if x.dim() >= 3:  # images: a grid of the first 100 beside the array
        written.append(save_png_grid(x[:100], out.with_suffix(".png")))
    if not args.quiet:
        what = "means E[x|z]" if args.mean else "draws x ~ p(x|z)"
        print(f"wrote {', '.join(map(str, written))}: {args.num} {what}, z ~ p(z)")
    return 0
