"""Checkpoints and resume: a resumed run is bit-identical; failures keep the last checkpoint;
files that are not our checkpoints, or would run code when read, are refused."""

import errno
import hashlib
import json
import os

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import small_vae
from pairs import LinearGaussian

from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm
from pyro_vae.infer.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pyro_vae.infer.training.loop import train
from pyro_vae.infer.training.options import LabelledStream
from pyro_vae.infer.training.svi import TrainingDivergedError
from pyro_vae.models.m2 import M2

# --- resume --------------------------------------------------------------------------------------


def _run(mnist, out_dir, epochs, resume=False):
    pyro.clear_param_store()
    vae = small_vae(seed=0)
    result = train(
        vae.model,
        vae.guide,
        mnist.train,
        val_data=mnist.test.x[:200],
        epochs=epochs,
        batch_size=256,
        seed=0,
        out_dir=out_dir,
        resume=resume,
        progress=False,
    )
    return vae, result


def test_resumed_run_is_bit_identical(mnist, tmp_path):
    full_vae, full = _run(mnist, tmp_path / "full", epochs=4)
    _run(mnist, tmp_path / "split", epochs=2)
    resumed_vae, resumed = _run(mnist, tmp_path / "split", epochs=4, resume=True)
    for (name, a), b in zip(
        full_vae.state_dict().items(), resumed_vae.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"{name} differs after resuming"

    def strip(history):
        return [
            {k: v for k, v in r.items() if k not in ("seconds", "examples_per_s")} for r in history
        ]

    assert strip(full.history) == strip(resumed.history)
    saved = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [r["epoch"] for r in saved] == [1, 2, 3, 4]
    assert (tmp_path / "split" / "history.csv").read_text().startswith("epoch,train_loss,val_loss")


def _m2_run(out_dir, epochs, resume=False):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    m2 = M2(16, 4, latent_dim=2, hidden=(8,))
    generator = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.rand(60, 16, generator=generator), generator=generator)
    y = torch.arange(60) % 4
    result = train(
        m2.model,
        m2.guide,
        x[12:],
        labelled=LabelledStream(
            (x[:12], y[:12]),
            batch_size=5,
            loss=AuxiliaryTerm("trace", m2.classifier_nll, weight=0.5),
        ),
        loss="enum",
        val_data=x[:10],
        epochs=epochs,
        batch_size=16,
        seed=0,
        out_dir=out_dir,
        resume=resume,
        progress=False,
    )
    return m2, result


def test_semi_supervised_run_resumes_bit_identically(tmp_path):
    full_m2, full = _m2_run(tmp_path / "full", epochs=3)
    _m2_run(tmp_path / "split", epochs=1)
    resumed_m2, resumed = _m2_run(tmp_path / "split", epochs=3, resume=True)
    for (name, a), b in zip(
        full_m2.state_dict().items(), resumed_m2.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"{name} differs after resuming"
    keys = ("train_loss", "val_loss", "train_objective")
    assert [[r[k] for k in keys] for r in full.history] == [
        [r[k] for k in keys] for r in resumed.history
    ]
    # the classification term makes the minimized objective a surrogate above -ELBO
    assert all(r["train_objective"] > r["train_loss"] for r in full.history)


# --- failures keep the checkpoint ----------------------------------------------------------------


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Poisonable:
    """The LinearGaussian pair whose likelihood turns NaN once ``poisoned`` is set."""

    def __init__(self, poison_from_call=None):
        self.calls, self.poison_from_call, self.guide = 0, poison_from_call, LinearGaussian().guide

    def model(self, x):
        self.calls += 1
        a = pyro.param("a", torch.tensor(0.1))
        poisoned = self.poison_from_call is not None and self.calls >= self.poison_from_call
        scale = torch.tensor(float("nan") if poisoned else 1.0)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(a * z, scale, validate_args=False), obs=x)


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # the set-up trace of the poisoned pair
def test_divergence_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    x = torch.randn(400)
    pair = Poisonable()
    train(pair.model, pair.guide, x, epochs=1, batch_size=100, out_dir=tmp_path, progress=False)
    checkpoint = tmp_path / "checkpoint.pt"
    digest = _digest(checkpoint)
    pair.poison_from_call = 0  # from now on
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, batch 1.*checkpoint.*unchanged"):
        train(pair.model, pair.guide, x, epochs=3, batch_size=100, out_dir=tmp_path,
              resume=True, progress=False)  # fmt: skip
    assert _digest(checkpoint) == digest
    assert load_checkpoint(checkpoint)["epoch"] == 1


def test_divergence_before_any_checkpoint_says_none_was_written(tmp_path):
    pair = Poisonable(poison_from_call=3)  # call 1 is the set-up trace: the second step
    with pytest.raises(TrainingDivergedError, match="batch 2; no checkpoint was written yet"):
        train(pair.model, pair.guide, torch.randn(400), epochs=1, batch_size=100,
              out_dir=tmp_path, progress=False)  # fmt: skip
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_run_removes_the_temporary_files_of_writes_killed_mid_way(tmp_path):
    # kill -9 during a save leaves atomic_write's temporary file beside the checkpoint
    leftovers = [tmp_path / ".checkpoint.pt.a1b2.tmp", tmp_path / ".history.json.c3d4.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    other = tmp_path / ".notes.txt.e5f6.tmp"  # not a file of the run: not ours to remove
    other.write_bytes(b"")
    pair = LinearGaussian()
    train(pair.model, pair.guide, torch.randn(50), epochs=1, out_dir=tmp_path, resume=True,
          progress=False)  # fmt: skip
    assert not any(path.exists() for path in leftovers) and other.exists()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_on_epoch_end_comes_as_soon_as_the_checkpoint_is_written(tmp_path):
    # before the history files: what a caller records there (the epoch a SIGTERM names) can
    # never lag the checkpoint a signal could stop the run after
    seen = []

    def on_epoch_end(record):
        history = tmp_path / "history.json"
        written = json.loads(history.read_text()) if history.exists() else []
        checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")["epoch"]
        seen.append((record["epoch"], checkpoint, len(written)))

    pair = LinearGaussian()
    train(pair.model, pair.guide, torch.randn(50), epochs=2, out_dir=tmp_path, progress=False,
          on_epoch_end=on_epoch_end)  # fmt: skip
    assert seen == [(1, 1, 0), (2, 2, 1)]
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2


def test_a_checkpoint_has_the_permissions_of_any_new_file(tmp_path):
    # not the 0600 of the temporary file it is written to first
    umask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "checkpoint.pt", {"x": torch.zeros(1)})
    finally:
        os.umask(umask)
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_says_so_although_torch_save_hides_the_os_error(tmp_path, monkeypatch):
    # a file whose writes fail as on a full disk: torch.save turns that OSError into
    # "[enforce fail at inline_container.cc:...] unexpected pos ..."
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.file.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode, **kw: Full(real_fdopen(fd, mode, **kw)))
    path = tmp_path / "checkpoint.pt"
    full = r"^no space left on device writing checkpoint .*; none was written$"
    with pytest.raises(OSError, match=full) as info:
        save_checkpoint(path, {"x": torch.zeros(1000)})
    assert info.value.errno == errno.ENOSPC
    assert not any(tmp_path.iterdir())  # the temporary file is gone too


# --- files that are not checkpoints --------------------------------------------------------------


def test_corrupted_checkpoint_is_refused(mnist, tmp_path):
    _run(mnist, tmp_path, epochs=1)
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupted"):
        _run(mnist, tmp_path, epochs=2, resume=True)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = str(tmp_path / "code-ran")
    path = tmp_path / "evil.pt"
    torch.save({"format": "pyro_vae.checkpoint/1", "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not os.path.exists(marker), "unpickling ran code"


def test_foreign_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a pyro_vae checkpoint"):
        load_checkpoint(path)
