"""Benchmark: the compiled step on the objectives beyond the plain ELBO, against the eager step
and against NumPyro's ``jax.jit`` doing the same thing.

Each row trains with the library's own epoch loop (:func:`pyro_vae.infer.training.epochs.
run_epoch`, the loop ``train`` runs) on MNIST-5k, eagerly (``SVIStep``) and compiled
(``CompiledSVIStep``), from the same start weights, and NumPyro from those weights too; the
three alternate over ``--rounds`` rounds in one process at equal threads, and each rate is the
median of its rounds (compile time apart: the warm-up round absorbs it).

- ``annealing``: the 784-400-20 ReLU VAE of ``bench_train.py``, batch 128, with linear KL
  annealing over the timed epochs (``KLAnnealing``); NumPyro: the same VAE with the KL weight
  beta scaling the z site of model and guide, passed as an argument of the jitted
  ``svi.update``, so that it changes every step without a new trace.
- ``free bits``: the same VAE with free bits (0.1 nats per latent dimension). NumPyro has no
  free-bits objective, so its row is a NumPyro ``ELBO`` written for it (the guide and model
  traced by NumPyro's handlers, the Monte Carlo KL of each latent dimension averaged over the
  batch and held at 0.1 nats at least, as ``KLControlledELBO`` computes it), jitted in
  ``svi.update`` as any NumPyro loss.
- ``M2``: the command line's M2 (z 50, hidden 500, softplus, batch 200, 100 labelled digits,
  alpha 46 N_l, alternate schedule with ``passes="auto"``): every unlabelled batch a
  ``TraceEnum_ELBO`` step that sums y out, every labelled batch two steps (-ELBO given y, then
  the classification term). NumPyro: the same networks, the same order of steps, with
  NumPyro's ``TraceEnum_ELBO`` (parallel enumeration; needs funsor) for the unlabelled steps and
  ``Trace_ELBO`` for the labelled ones, three jitted updates sharing one Adam over all
  parameters (a parameter a loss does not use gets a zero gradient and still moves with its
  momentum, where torch's Adam skips it).

- ``validation``: the VAE's validation pass as ``train`` runs it (the -ELBO of every batch,
  without gradients), by the eager step's ``evaluate`` and by the compiled graph
  (``compile_evaluation``): what compiling validation saves per batch, against its compile
  time; ``AUTO_MIN_EVALUATIONS`` (the compile policy) comes from it.

The VAE rows also time the step's matrix products alone (``GEMMs only``: each layer's forward
product and weight gradient, and the input gradients, with torch's BLAS), a ceiling on what
any implementation of the same math reaches on this CPU: how close the compiled step and
NumPyro come to it says how much either could still gain.

Rates are unlabelled datapoints per second (for M2, of the unlabelled stream: the epoch's work
over its unlabelled images). The NumPyro rows need the ``bench`` extra (numpyro, CPU jax,
funsor); without it they are skipped with a notice.

    python experiments/bench_steps.py                  # ~4 minutes on 2 CPU cores
    python experiments/bench_steps.py --rows m2 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))  # bench_train's NumPyro VAE
from bench_train import load_numpyro, numpyro_vae  # noqa: E402

from pyro_vae.data import labelled_split, load_dataset  # noqa: E402
from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm  # noqa: E402
from pyro_vae.infer.objectives.kl_control import KLAnnealing, KLControlledELBO  # noqa: E402
from pyro_vae.infer.training.compiled_step import CompiledSVIStep  # noqa: E402
from pyro_vae.infer.training.epochs import (  # noqa: E402
    Batching,
    DataStream,
    labelled_positions,
    mean_loss,
    run_epoch,
)
from pyro_vae.infer.training.options import LabelledStream  # noqa: E402
from pyro_vae.infer.training.svi import SVIStep  # noqa: E402
from pyro_vae.models.m2 import M2  # noqa: E402
from pyro_vae.models.vae import VAE  # noqa: E402
from pyro_vae.runs.config import M2_ALPHA_PER_LABEL  # noqa: E402

__all__ = ["main"]

ROWS = ("annealing", "free-bits", "m2", "validation")
FREE_BITS = 0.1  # nats per latent dimension


class LibraryRunner:
    """Epochs of one step class on the row's pair, through the library's epoch loop."""

    def __init__(self, step_cls, pair, loss, data, labelled=None, batch_size=128):
        self.device = torch.device("cpu")
        self.data = DataStream.of(data, "data", self.device)
        self.labelled = None
        options, first_l = {}, None
        if labelled is not None:
            self.labelled = DataStream.of(labelled.data, "labelled", self.device)
            options["labelled_loss"] = labelled.loss
            first_l = self.labelled.batch(slice(0, batch_size), self.device)
        self.svi = step_cls(pair.model, pair.guide, loss, lr=1e-3, **options)
        self.svi.setup(*self.data.batch(slice(0, batch_size), self.device), labelled=first_l)
        batch_l = min(batch_size, len(self.labelled)) if labelled is not None else None
        passes = 1
        if labelled is not None:
            num_batches = math.ceil(len(self.data) / batch_size)
            passes = labelled.resolve_passes(num_batches, math.ceil(len(self.labelled) / batch_l))
        self.passes = passes
        self.batching = Batching(
            batch_size, batch_l, drop_last=False, device=self.device,
            labelled_schedule="alternate", labelled_passes=passes, progress=False,
        )  # fmt: skip
        self.epoch = 0

    def __call__(self) -> float:
        """One epoch; unlabelled datapoints per second."""
        self.epoch += 1
        tic = time.perf_counter()
        run_epoch(self.svi, self.data, self.labelled, self.batching, self.epoch)
        return len(self.data) / (time.perf_counter() - tic)


class ValidationRunner(LibraryRunner):
    """Validation passes (the loop's ``mean_loss``: -ELBO without gradients, batch by batch),
    by ``evaluate`` eagerly or compiled (``compile_evaluation=True``)."""

    def __init__(self, step_cls, pair, data):
        super().__init__(step_cls, pair, "trace", data)
        if isinstance(self.svi, CompiledSVIStep):
            self.svi.compile_evaluation = True

    def __call__(self) -> float:
        """One pass; datapoints per second."""
        tic = time.perf_counter()
        mean_loss(self.svi, self.data, self.batching)
        return len(self.data) / (time.perf_counter() - tic)


def validation_rows(x, args) -> dict:
    """The validation row: the main job's VAE scoring ``x`` in batches, eager and compiled."""
    pyro.set_rng_seed(args.seed)
    vae = VAE(784, latent_dim=20, hidden=(400,))
    runners = {}
    for name, step_cls in _step_classes(args):
        with pyro.get_param_store().scope():
            runners[name] = ValidationRunner(step_cls, copy.deepcopy(vae), x)
    return runners


def _step_classes(args) -> list:
    steps = [("eager", SVIStep)]
    return steps if args.no_compiled else [*steps, ("compiled", CompiledSVIStep)]


def vae_rows(row: str, x, args, numpyro) -> dict:
    """The annealing or free-bits row: eager, compiled and (annealing) NumPyro runners."""
    pyro.set_rng_seed(args.seed)
    vae = VAE(784, latent_dim=20, hidden=(400,))
    epochs = args.rounds * args.epochs_per_round + 2  # the schedule rises over the whole run
    runners = {}
    for name, step_cls in _step_classes(args):
        if row == "annealing":
            loss = KLControlledELBO(KLAnnealing(epochs=epochs))
        else:
            loss = KLControlledELBO(free_bits=FREE_BITS)
        with pyro.get_param_store().scope():
            runners[name] = LibraryRunner(step_cls, copy.deepcopy(vae), loss, x)
    if numpyro is not None and row == "annealing":
        runners["NumPyro"] = numpyro_annealing(vae, x, args, epochs, numpyro)
    elif numpyro is not None:
        runners["NumPyro"] = numpyro_free_bits(vae, x, args, FREE_BITS, numpyro)
    runners["GEMMs only"] = gemm_floor(vae, x, args.batch_size)
    return runners


def gemm_floor(vae, x, batch_size: int):
    """The VAE step's matrix products alone, with torch's BLAS: each linear layer's forward
    product and its weight gradient, and the input gradient of every layer but the first.
    They are most of the step's arithmetic, so no implementation of the same math on this CPU
    (ours, NumPyro's) can run much faster than this: a runner returning datapoints/s."""
    layers = [m for m in vae.modules() if isinstance(m, torch.nn.Linear)]
    weights = [layer.weight.detach().T.contiguous() for layer in layers]  # (in, out)
    inputs = [torch.rand(batch_size, w.shape[0]) for w in weights]
    grads = [torch.rand(batch_size, w.shape[1]) for w in weights]
    steps = math.ceil(len(x) / batch_size)

    def epoch() -> float:
        tic = time.perf_counter()
        for _ in range(steps):
            for i, (w, a, g) in enumerate(zip(weights, inputs, grads, strict=True)):
                torch.mm(a, w)  # forward
                torch.mm(a.T, g)  # weight gradient
                if i:  # the data need no gradient
                    torch.mm(g, w.T)
        return len(x) / (time.perf_counter() - tic)

    return epoch


def numpyro_annealing(vae, x, args, epochs, numpyro_modules):
    """NumPyro's jitted update of the VAE, beta(t) rising linearly over ``epochs``."""
    jax, numpyro = numpyro_modules
    model, guide, _ = numpyro_vae(vae, jax, numpyro)
    svi = numpyro.infer.SVI(
        lambda x, beta: model(x, True, beta),  # only beta is traced
        lambda x, beta: guide(x, True, beta),
        numpyro.optim.Adam(1e-3),
        numpyro.infer.Trace_ELBO(),
    )
    return _numpyro_epochs(svi, jax, x, args, beta_over=epochs)


def numpyro_free_bits(vae, x, args, free_bits, numpyro_modules):
    """NumPyro's jitted update of the VAE under a free-bits ELBO written as a NumPyro ``ELBO``:
    -L + sum_d max(lambda, E_batch[log q(z_d) - log p(z_d)]), as ``KLControlledELBO``."""
    jax, numpyro = numpyro_modules
    jnp, handlers = jax.numpy, numpyro.handlers
    model, guide, _ = numpyro_vae(vae, jax, numpyro)

    class FreeBitsELBO(numpyro.infer.ELBO):
        def loss_with_mutable_state(self, rng_key, param_map, model, guide, x):
            seeded = handlers.seed(handlers.substitute(guide, data=param_map), rng_key)
            guide_trace = handlers.trace(seeded).get_trace(x, False)
            replayed = handlers.replay(handlers.substitute(model, data=param_map), guide_trace)
            model_trace = handlers.trace(replayed).get_trace(x, False)
            q, p, obs = guide_trace["z"], model_trace["z"], model_trace["x"]
            z, n = q["value"], x.shape[0]
            kl = (q["fn"].base_dist.log_prob(z) - p["fn"].base_dist.log_prob(z)).sum(0) / n
            log_lik = obs["fn"].log_prob(obs["value"]).sum() / n
            return {
                "loss": jnp.maximum(kl, free_bits).sum() - log_lik,
                "mutable_state": None,
            }

    svi = numpyro.infer.SVI(model, guide, numpyro.optim.Adam(1e-3), FreeBitsELBO())
    return _numpyro_epochs(svi, jax, x, args)


def _numpyro_epochs(svi, jax, x, args, beta_over: float | None = None):
    """An epoch of ``jax.jit(svi.update)`` steps (with beta(t) rising linearly over
    ``beta_over`` epochs as its argument, if given): a runner returning datapoints/s."""
    x_np, batch = x.numpy(), args.batch_size
    schedule = () if beta_over is None else (1.0,)
    state = [svi.init(jax.random.PRNGKey(args.seed), x_np[:batch], *schedule)]
    update = jax.jit(svi.update)
    steps_per_epoch = math.ceil(len(x_np) / batch)
    done = [0]

    def epoch() -> float:
        tic = time.perf_counter()
        order = torch.randperm(len(x_np)).numpy()
        for step in range(steps_per_epoch):
            rows = x_np[order[step * batch : (step + 1) * batch]]
            beta = (
                ()
                if beta_over is None
                else (min(1.0, (done[0] + step / steps_per_epoch) / beta_over),)
            )
            state[0], loss = update(state[0], rows, *beta)
            float(loss)  # as .item() in the torch loop: the step has finished
        done[0] += 1
        return len(x_np) / (time.perf_counter() - tic)

    return epoch


def m2_rows(data, args, numpyro) -> dict:
    """The M2 row: eager, compiled and NumPyro runners on the same labelled split."""
    labelled, unlabelled = labelled_split(data, 10, seed=args.seed)
    pyro.set_rng_seed(args.seed)
    m2 = M2(784, latent_dim=50, hidden=(500,), activation="softplus")
    alpha = M2_ALPHA_PER_LABEL * len(labelled.x)
    runners = {}
    for name, step_cls in _step_classes(args):
        with pyro.get_param_store().scope():
            model = copy.deepcopy(m2)
            classify = AuxiliaryTerm("trace", model.classifier_nll, weight=alpha / len(labelled.x))
            stream = LabelledStream((labelled.x, labelled.y), loss=classify)
            runners[name] = LibraryRunner(
                step_cls, model, "enum", unlabelled.x, stream, batch_size=200
            )
    if numpyro is not None:
        passes = runners["eager"].passes
        runners["NumPyro"] = numpyro_m2(m2, unlabelled.x, labelled, alpha, passes, numpyro)
    return runners


def numpyro_m2(m2, x, labelled, alpha, passes, numpyro_modules):
    """NumPyro's M2 from ``m2``'s weights, stepped in the library's alternate order."""
    jax, numpyro = numpyro_modules
    jnp, dist, handlers = jax.numpy, numpyro.distributions, numpyro.handlers
    init = {
        n.replace(".", "_"): jnp.asarray(p.detach().numpy().T) for n, p in m2.named_parameters()
    }
    classes, latent, batch = 10, 50, 200

    def mlp(prefix, h):
        for i, layer in enumerate(("0", "2")):
            w = numpyro.param(f"{prefix}_{layer}_weight", init[f"{prefix}_{layer}_weight"])
            h = h @ w + numpyro.param(f"{prefix}_{layer}_bias", init[f"{prefix}_{layer}_bias"])
            h = jax.nn.softplus(h) if i == 0 else h
        return h

    def concat(a, b):
        shape = jnp.broadcast_shapes(a.shape[:-1], b.shape[:-1])
        parts = [jnp.broadcast_to(t, (*shape, t.shape[-1])) for t in (a, b)]
        return jnp.concatenate(parts, -1)

    def model(x, y=None):
        with numpyro.plate("data", x.shape[0]), handlers.scale(scale=1 / batch):
            y = numpyro.sample("y", dist.Categorical(logits=jnp.zeros(classes)), obs=y)
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([latent]).to_event(1))
            logits = mlp("decoder_net", concat(z, jax.nn.one_hot(y, classes)))
            numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x, y=None):
        with numpyro.plate("data", x.shape[0]), handlers.scale(scale=1 / batch):
            if y is None:
                q_y = dist.Categorical(logits=mlp("classifier", x))
                y = numpyro.sample("y", q_y, infer={"enumerate": "parallel"})
            out = mlp("encoder_net", concat(x, jax.nn.one_hot(y, classes)))
            loc, scale = out[..., :latent], jnp.exp(out[..., latent:])
            numpyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def classify(x, y):  # alpha / N_l * sum_n -log q(y_n|x_n), per datapoint of a batch of B
        with (
            numpyro.plate("data", x.shape[0]),
            handlers.scale(scale=alpha / len(labelled.x) / batch),
        ):
            numpyro.sample("y_aux", dist.Categorical(logits=mlp("classifier", x)), obs=y)

    optimizer = numpyro.optim.Adam(1e-3)

    def jitted(elbo, model_fn, guide_fn):
        def update(state, key, *data):
            params = optimizer.get_params(state)
            value, grads = jax.value_and_grad(
                lambda p: elbo.loss(key, p, model_fn, guide_fn, *data)
            )(params)
            return optimizer.update(grads, state), value

        return jax.jit(update)

    enum_update = jitted(numpyro.infer.TraceEnum_ELBO(max_plate_nesting=1), model, guide)
    labelled_update = jitted(numpyro.infer.Trace_ELBO(), model, guide)
    classify_update = jitted(numpyro.infer.Trace_ELBO(), classify, lambda x, y: None)
    params = {k: v for k, v in init.items()}
    state = [optimizer.init(params), jax.random.PRNGKey(0)]
    x_np, x_l, y_l = x.numpy(), labelled.x.numpy(), labelled.y.numpy()
    steps_u = math.ceil(len(x_np) / batch)
    steps_l = passes * math.ceil(len(x_l) / batch)
    at = set(labelled_positions(steps_u, steps_l))

    def step(update, *data):
        state[1], key = jax.random.split(state[1])
        state[0], value = update(state[0], key, *data)
        float(value)

    def epoch() -> float:
        tic = time.perf_counter()
        order, u = torch.randperm(len(x_np)).numpy(), 0
        for position in range(steps_u + steps_l):
            if position in at:  # one pass of the 100 labelled digits is one batch
                rows = torch.randperm(len(x_l)).numpy()
                step(labelled_update, x_l[rows], y_l[rows])
                step(classify_update, x_l[rows], y_l[rows])
            else:
                step(enum_update, x_np[order[u * batch : (u + 1) * batch]])
                u += 1
        return len(x_np) / (time.perf_counter() - tic)

    return epoch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--epochs-per-round", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128, help="the VAE rows' batch")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-numpyro", action="store_true", help="skip the NumPyro rows")
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled rows")
    parser.add_argument("--num-data", type=int, default=4000, help="training digits used")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = load_dataset("mnist5k", binarize="static", seed=args.seed).train
    data = train.subset(torch.arange(min(args.num_data, len(train))))
    numpyro = None if args.no_numpyro else load_numpyro()
    results = {}
    for row in args.rows:
        if row == "m2":
            runners = m2_rows(data, args, numpyro)
        elif row == "validation":
            runners = validation_rows(data.x, args)
        else:
            runners = vae_rows(row, data.x, args, numpyro)
        for run in runners.values():  # warm-up: compiles, and JAX traces
            run()
        rates = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                rates[name] += [run() for _ in range(args.epochs_per_round)]
        results[row] = {name: statistics.median(r) for name, r in rates.items()}
        if "compiled" in runners:
            svi = runners["compiled"].svi
            results[row]["fallback"] = svi.fallback_reason
            results[row]["compile_s"] = svi.compile_seconds + svi.evaluation_compile_seconds
    _print(results, args)
    return results


def _print(results: dict, args) -> None:
    print(f"\n{args.threads} threads, median of {args.rounds} rounds; unlabelled datapoints/s")
    print("| row | eager | compiled | NumPyro | compiled / eager | compiled / NumPyro |")
    print("|---|---|---|---|---|---|")
    for row, r in results.items():
        numpyro, compiled = r.get("NumPyro"), r.get("compiled")
        cells = [f"{r['eager']:.0f}", f"{compiled:.0f}" if compiled else "-"]
        cells.append(f"{numpyro:.0f}" if numpyro else "-")
        cells.append(f"{compiled / r['eager']:.2f}x" if compiled else "-")
        cells.append(f"{compiled / numpyro:.2f}x" if compiled and numpyro else "-")
        print(f"| {row} | {' | '.join(cells)} |")
        if "GEMMs only" in r:
            floor = r["GEMMs only"]
            shares = [
                f"{name} {r[name] / floor:.2f}" for name in ("compiled", "NumPyro") if r.get(name)
            ]
            print(
                f"  ({row}: the step's matrix products alone run at {floor:.0f}/s; "
                f"as a fraction of that: {', '.join(shares)})"
            )
        if "compile_s" in r:
            print(f"  ({row}: capturing and compiling took {r['compile_s']:.1f} s)")
        if r.get("fallback"):
            print(f"  (the compiled step fell back: {r['fallback']})")


if __name__ == "__main__":
    main()
