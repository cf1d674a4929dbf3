"""A port of Pyro's semi-supervised VAE example (M2), on this library's data and labelled splits.

The reference that ``pyro-vae train --model m2`` is measured against. Written from Pyro's
``examples/vae/ss_vae_M2.py`` (Pyro 1.9) with plain Pyro (``SVI``, ``TraceEnum_ELBO``,
``pyro.optim.Adam``), nothing of this library but the data:

- the SSVAE: q(y|x) softmax(MLP), q(z|x,y) Normal(MLP, exp(MLP)), p(x|y,z) Bernoulli(sigmoid(
  MLP)) on pixel intensities in [0, 1] (``validate_args=False``: not binary), hidden 500
  softplus, z 50; its hidden layers start from N(0, 0.001) weights and biases;
- its training loop (``--loop pyro``): every batch is an ``SVI`` step on ``TraceEnum_ELBO``
  (y enumerated in parallel for unlabelled batches), summed over the batch (no minibatch
  scaling), followed by a second ``SVI`` step on the classification loss 46 * -log q(y|x)
  (``aux_loss_multiplier``); the labelled batches are spread through the epoch, one every
  int(N / N_l) batches. Both steps share one Adam (lr 4.2e-4, betas (0.9, 0.999)). On an
  unlabelled batch the classification loss is empty, but ``SVI.step`` left the gradients at
  zero (not None), so Adam still takes a step on its momentum alone (``--aux-steps every``;
  ``--aux-steps labelled`` skips it).

The switches change one thing at a time against Pyro's example:

- ``--init torch``: torch's default initialization instead of N(0, 0.001);
- ``--loop joint``: this library's former loop, one Adam step per unlabelled batch on the
  weighted union (N_u * U(batch) + N_l * (L(batch_l) + 46 * CE(batch_l))) / (N_u + N_l), batch
  means, a labelled batch in every step;
- ``--aux-steps labelled``: no momentum-only steps on unlabelled batches.

Accuracy of argmax q(y|x) on the validation and test splits after every epoch; reported: the
last epoch's test accuracy, the test accuracy of the epoch with the best validation accuracy
(ties: the earliest), and the mean test accuracy over the last 10 epochs.

Run: ``python experiments/pyro_ss_vae.py --dataset mnist5k --labels-per-class 10 --epochs 100
--seeds 0 1 2`` (and ``--dataset fashion-mnist --labels-per-class 100 --epochs 10``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from torch import nn

from pyro_vae.data import labelled_split, load_dataset
from pyro_vae.infer.runtime.files import write_json

__all__ = ["SSVAE", "main", "summarize"]


def mlp(sizes, out_activation, init: str) -> nn.Sequential:
    """Linear layers with softplus between them; hidden layers from N(0, 0.001) for "pyro"."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(a, b)
        hidden = i < len(sizes) - 2
        if hidden and init == "pyro":
            nn.init.normal_(linear.weight, 0.0, 0.001)
            nn.init.normal_(linear.bias, 0.0, 0.001)
        layers += [linear, nn.Softplus()] if hidden else [linear]
    if out_activation is not None:
        layers.append(out_activation)
    return nn.Sequential(*layers)


class SSVAE(nn.Module):
    """Pyro's example's M2: model(x, y=None), guide(x, y=None), y one-hot."""

    def __init__(self, data_dim, num_classes=10, z_dim=50, hidden=500, aux=46.0, init="pyro"):
        super().__init__()
        self.num_classes, self.z_dim, self.aux = num_classes, z_dim, aux
        self.encoder_y = mlp([data_dim, hidden, num_classes], nn.Softmax(-1), init)
        self.encoder_z = mlp([data_dim + num_classes, hidden, 2 * z_dim], None, init)
        self.decoder = mlp([z_dim + num_classes, hidden, data_dim], nn.Sigmoid(), init)

    @staticmethod
    def _cat(a, b):
        shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
        return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        n = xs.shape[0]
        with pyro.plate("data"):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(n, self.z_dim), 1.0).to_event(1))
            prior_y = xs.new_full((n, self.num_classes), 1.0 / self.num_classes)
            ys = pyro.sample("y", dist.OneHotCategorical(prior_y), obs=ys)
            loc = self.decoder(self._cat(zs, ys))
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(self.encoder_y(xs)))
            loc, log_scale = self.encoder_z(self._cat(xs, ys)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                with pyro.poutine.scale(scale=self.aux):
                    pyro.sample("y_aux", dist.OneHotCategorical(self.encoder_y(xs)), obs=ys)

    def guide_classify(self, xs, ys=None):
        pass

    @torch.no_grad()
    def accuracy(self, x, y) -> float:
        return (self.encoder_y(x).argmax(-1) == y).double().mean().item()


def batches(n: int, size: int) -> list[torch.Tensor]:
    """A shuffled pass over n indices in batches of ``size`` (the last one shorter)."""
    return list(torch.randperm(n).split(size))


def pyro_epoch(ssvae, losses, unlabelled, labelled, args) -> None:
    """One epoch of Pyro's example's ``run_inference_for_epoch``."""
    x_u, (x_l, y_l) = unlabelled, labelled
    sup, unsup = batches(len(x_l), args.batch_size), batches(len(x_u), args.batch_size)
    period = int((len(x_u) + len(x_l)) / len(x_l))  # one labelled batch every `period`
    taken = 0
    for i in range(len(sup) + len(unsup)):
        if i % period == 1 and taken < len(sup):
            index, taken = sup[taken], taken + 1
            batch = (x_l[index], y_l[index])
        else:
            batch = (x_u[unsup[i - taken]],)
        losses[0].step(*batch)
        if len(batch) == 2 or args.aux_steps == "every":
            losses[1].step(*batch)


def joint_epoch(ssvae, elbo, optimizer, unlabelled, labelled, args) -> None:
    """One epoch of the weighted-union loop: a labelled batch inside every unlabelled step."""
    x_u, (x_l, y_l) = unlabelled, labelled
    n_u, n_l = len(x_u), len(x_l)
    batch_l = min(args.batch_size, n_l)
    unsup = batches(n_u, args.batch_size)
    order_l = torch.cat([torch.randperm(n_l) for _ in range(-(-len(unsup) * batch_l // n_l))])
    guide = config_enumerate(ssvae.guide, "parallel", expand=True)
    for step, index in enumerate(unsup):
        index_l = order_l[step * batch_l : (step + 1) * batch_l]
        xb, yb = x_l[index_l], y_l[index_l]
        u = elbo.differentiable_loss(ssvae.model, guide, x_u[index]) / len(index)
        lab = elbo.differentiable_loss(ssvae.model, guide, xb, yb) / len(index_l)
        ce = -(ssvae.encoder_y(xb).log() * yb).sum(-1).mean()
        loss = (n_u * u + n_l * (lab + args.aux * ce)) / (n_u + n_l)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def run(args, seed: int) -> dict:
    """Train the port with one seed; accuracies per epoch."""
    data = load_dataset(args.dataset, root=args.root, binarize=None, seed=seed, val_fraction=0.1)
    labelled, unlabelled = labelled_split(data.train, args.labels_per_class, seed=seed)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    ssvae = SSVAE(data.train.data_dim, 10, args.latent, args.hidden, args.aux, args.init)
    one_hot = torch.nn.functional.one_hot(labelled.y, 10).to(labelled.x.dtype)
    streams = (unlabelled.x, (labelled.x, one_hot))
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    if args.loop == "pyro":
        optimizer = pyro.optim.Adam({"lr": args.lr, "betas": (0.9, 0.999)})
        guide = config_enumerate(ssvae.guide, "parallel", expand=True)
        losses = [
            SVI(ssvae.model, guide, optimizer, loss=elbo),
            SVI(ssvae.model_classify, ssvae.guide_classify, optimizer, loss=Trace_ELBO()),
        ]
    else:
        optimizer = torch.optim.Adam(ssvae.parameters(), lr=args.lr, betas=(0.9, 0.999))
    val_acc, test_acc = [], []
    tic = time.perf_counter()
    for _ in range(args.epochs):
        if args.loop == "pyro":
            pyro_epoch(ssvae, losses, *streams, args)
        else:
            joint_epoch(ssvae, elbo, optimizer, *streams, args)
        val_acc.append(ssvae.accuracy(data.val.x, data.val.y))
        test_acc.append(ssvae.accuracy(data.test.x, data.test.y))
        if not args.quiet:
            print(
                f"seed {seed} epoch {len(val_acc)}: val {val_acc[-1]:.4f} test {test_acc[-1]:.4f}"
            )
    return summarize(val_acc, test_acc) | {"seed": seed, "seconds": time.perf_counter() - tic}


def summarize(val_acc: list[float], test_acc: list[float]) -> dict:
    """Last, best-validation-epoch and last-10-epochs test accuracies."""
    best = max(range(len(val_acc)), key=lambda i: (val_acc[i], -i))
    last = test_acc[-10:]
    return {
        "test_last": test_acc[-1],
        "best_val_epoch": best + 1,
        "test_at_best_val": test_acc[best],
        "test_last10": sum(last) / len(last),
        "val_acc": val_acc,
        "test_acc": test_acc,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--root", default=None, help="folder of the fashion-mnist files")
    parser.add_argument("--labels-per-class", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loop", choices=["pyro", "joint"], default="pyro")
    parser.add_argument("--init", choices=["pyro", "torch"], default="pyro")
    parser.add_argument("--aux-steps", choices=["every", "labelled"], default="every")
    parser.add_argument("--aux", type=float, default=46.0, help="aux_loss_multiplier")
    parser.add_argument("--lr", type=float, default=4.2e-4)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--latent", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the results")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--report", type=Path, default=None, help="print a results file")
    return parser.parse_args(argv)


def spread(rows: list[dict], key: str) -> str:
    """``key`` over the seeds: mean ± sample standard deviation (range), in percent."""
    values = [100 * row[key] for row in rows]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f}% ± {sd:.1f} ({min(values):.1f}-{max(values):.1f}%)"


def report(rows: list[dict]) -> None:
    """Each seed's accuracies, then their spread over the seeds."""
    for row in rows:
        print(
            f"seed {row['seed']}: test {row['test_last']:.4f} (last), "
            f"{row['test_at_best_val']:.4f} (best validation epoch {row['best_val_epoch']}), "
            f"{row['test_last10']:.4f} (mean of the last 10 epochs); {row['seconds']:.0f} s"
        )
    print(f"over {len(rows)} seeds: test {spread(rows, 'test_last')} (last epoch), ")
    print(f"  {spread(rows, 'test_at_best_val')} (best validation epoch)")


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.report is not None:  # a results file written before: print it again
        rows = json.loads(args.report.read_text())["rows"]
        report(rows)
        return rows
    torch.set_num_threads(args.threads)
    setting = {k: v for k, v in vars(args).items() if k not in ("out", "quiet", "root", "report")}
    rows = [run(args, seed) for seed in args.seeds]
    report(rows)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, {"setting": setting, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
