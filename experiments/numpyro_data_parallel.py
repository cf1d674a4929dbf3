"""NumPyro's data parallelism for the VAE of ``bench_distributed.py``: the reference beside the
torchrun rows.

The README's 784-400-20 Bernoulli VAE (from the same torch start weights, through
``bench_train.numpyro_vae``), trained with ``jax.pmap`` over P CPU devices (XLA's
``--xla_force_host_platform_device_count=P``, one thread each, as the torchrun rows run one
thread per process): every step splits the global batch into P local batches, each device
takes the gradient of NumPyro's ``Trace_ELBO`` on its own, ``lax.pmean`` averages the
gradients and the loss over the devices, and every device applies the same Adam update, as
torch's all-reduce and step do. Prints one JSON line: the examples per second of each epoch.

    python experiments/numpyro_data_parallel.py --devices 2 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="CPU devices P (pmap width)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-data", type=int, default=None, help="training images used")
    args = parser.parse_args(argv)
    # before jax is imported: P host devices, one thread each
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={args.devices} "
        "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from bench_train import load_numpyro, numpyro_vae

    from pyro_vae.data import load_dataset
    from pyro_vae.models.vae import VAE

    torch.manual_seed(args.seed)
    jax, numpyro = load_numpyro()
    data = load_dataset(args.dataset, binarize="static", seed=args.seed, val_fraction=0.1)
    x = data.train.x.reshape(len(data.train.x), -1).numpy()[: args.num_data]
    model, guide, params = numpyro_vae(VAE(784, latent_dim=20, hidden=(400,)), jax, numpyro)
    elbo, optimizer = numpyro.infer.Trace_ELBO(), numpyro.optim.Adam(1e-3)

    def update(state, key, x_local):
        value, grads = jax.value_and_grad(
            lambda p: elbo.loss(key, p, model, guide, x_local)  # -ELBO per local datapoint
        )(optimizer.get_params(state))
        grads = jax.lax.pmean(grads, "devices")  # the all-reduce
        return optimizer.update(grads, state), jax.lax.pmean(value, "devices")

    step = jax.pmap(update, axis_name="devices")
    p, batch = args.devices, args.batch_size
    # one copy of the optimizer state per device, along the mapped axis
    state = jax.tree.map(lambda a: jax.numpy.stack([a] * p), optimizer.init(params))
    key, rates = jax.random.PRNGKey(args.seed), []
    for _ in range(args.epochs):
        tic, order = time.perf_counter(), torch.randperm(len(x)).numpy()
        steps = len(x) // batch  # equal local batches on every device
        for i in range(steps):
            key, *keys = jax.random.split(key, p + 1)
            rows = x[order[i * batch : (i + 1) * batch]].reshape(p, batch // p, -1)
            state, loss = step(state, jax.numpy.stack(keys), rows)
            float(loss[0])  # as .item(): the step has finished
        rates.append(steps * batch / (time.perf_counter() - tic))
    result = {"devices": p, "examples_per_s": rates}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
