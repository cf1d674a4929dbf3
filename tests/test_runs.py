"""The run-folder library behind ``pyro-vae``: options, recipes, the one model-building path,
reports. The command line end to end is in ``test_cli.py``."""

import json

import pytest
import torch

import pyro_vae.runs as runs
from pyro_vae.cli_parser import build_parser, given_options
from pyro_vae.data import load_dataset
from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm
from pyro_vae.infer.objectives.dreg import DReGObjective
from pyro_vae.infer.objectives.iwae import IWAEObjective
from pyro_vae.infer.objectives.kl_control import KLAnnealing, KLControlledELBO
from pyro_vae.infer.objectives.registry import LOSS_REGISTRY, LOSSES, LossChoice, make_objective
from pyro_vae.infer.training.checkpoint import load_checkpoint
from pyro_vae.models.m2 import M2
from pyro_vae.models.vae import VAE

# the options of a tiny run, as pyro-vae train's parser gives them (its defaults elsewhere)
TINY_RUN = ["--dataset", "digits", "--latent", "2", "--hidden", "16", "--epochs", "1",
            "--compile", "off", "--device", "cpu", "--threads", "1", "--quiet"]  # fmt: skip
OPTIONS = vars(build_parser().parse_args(["train", *TINY_RUN]))
TINY_GIVEN = given_options(build_parser().parse_args(["train", *TINY_RUN]), TINY_RUN)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", binarize="static", seed=0, val_fraction=0.1)


def _options(**changes):
    return runs.check_options({**OPTIONS, **changes}, given=TINY_GIVEN | set(changes))


def _train_run(out, **changes):
    """What pyro-vae train does, through the library: returns the recipe it trained."""
    options = _options(**changes)
    data = runs.run_data(runs.data_config(options))
    recipe = runs.training_recipe(options, data)
    config = runs.new_config(
        runs.data_config(options), options["model"], runs.architecture(recipe.model), recipe.options
    )
    out.mkdir()
    runs.write_config(out, config)
    recipe.train(out)
    return recipe


def test_every_name_imported_before_the_split_is_still_there():
    for name in ("CONFIG_NAME", "MODELS", "RUN_FILES", "Run", "check_writable",
                 "conditional_figures", "evaluation_data", "evaluation_labels", "load_run",
                 "read_config", "run_data", "test_images", "training_figures",
                 "write_text_atomic"):  # fmt: skip
        assert hasattr(runs, name), name
        assert name in runs.__all__, name


# --- the one model-building path ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["vae", "cvae", "m2"])
def test_load_run_rebuilds_the_architecture_and_weights_that_train_built(model, tmp_path):
    extra = {"flows": 2} if model == "vae" else {"labels_per_class": 2} if model == "m2" else {}
    recipe = _train_run(tmp_path / "run", model=model, **extra)
    run = runs.load_run(tmp_path / "run")
    assert run.kind == model and type(run.vae) is type(recipe.model)
    assert runs.architecture(run.vae) == runs.architecture(recipe.model)
    # the same parameters, by name and shape, holding the trained weights of the checkpoint
    trained = dict(recipe.model.named_parameters())
    rebuilt = dict(run.vae.named_parameters())
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in trained.items()}
    assert all(torch.equal(rebuilt[k].detach(), trained[k].detach()) for k in trained)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_build_model_from_stored_json_equals_the_model_from_options(digits):
    for model in ("vae", "cvae", "m2", "vamp"):
        arguments = runs.model_arguments({**OPTIONS, "model": model}, digits)
        built = runs.build_model(model, arguments)
        stored = json.loads(json.dumps(runs.architecture(built)))  # as config.json holds it
        assert runs.build_model(model, stored).config == built.config
    assert runs.model_arguments({**OPTIONS, "model": "cvae"}, digits)["num_classes"] == 10
    vamp = {**OPTIONS, "model": "vamp", "pseudo_inputs": 7}
    assert runs.build_model("vamp", runs.model_arguments(vamp, digits)).config["pseudo_inputs"] == 7
    with pytest.raises(ValueError, match="unknown model 'm3'"):
        runs.build_model("m3", {})


def test_a_seed_repeats_the_networks(digits):
    a, b = (runs.training_recipe(_options(), digits).model for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# --- the objective recipe ----------------------------------------------------------------------


# every registered loss that takes no setting from the options (the registry says which)
@pytest.mark.parametrize(
    "loss", [n for n in LOSSES if "num_particles" not in LOSS_REGISTRY[n].settings]
)
def test_a_plain_loss_is_its_name(loss):
    assert runs.training_objective({**OPTIONS, "loss": loss}) == loss


def _built(loss):
    vae = VAE(6, latent_dim=2, hidden=(4,))
    return make_objective(loss, vae.model, vae.guide, torch.bernoulli(torch.full((5, 6), 0.5)))


def test_the_objective_recipe_for_every_combination():
    assert runs.training_objective({}) == "trace"  # absent options are off
    for loss, cls in (("iwae", IWAEObjective), ("iwae-dreg", DReGObjective)):
        choice = runs.training_objective({**OPTIONS, "loss": loss, "iwae_k": 7})
        assert choice == LossChoice(loss, {"num_particles": 7})
        built = _built(choice)
        assert type(built) is cls and built.num_particles == 7
    cases = {
        # (anneal_epochs, anneal_start, anneal_cycles, free_bits) -> the objective's repr
        (2.0, 0.0, 1, 0.0): repr(KLControlledELBO(KLAnnealing(2.0), 0.0)),
        (2.0, 0.3, 3, 0.0): repr(KLControlledELBO(KLAnnealing(2.0, 0.3, 3), 0.0)),
        (None, 0.0, 1, 0.5): repr(KLControlledELBO(None, 0.5)),
        (4.0, 0.1, 2, 0.25): repr(KLControlledELBO(KLAnnealing(4.0, 0.1, 2), 0.25)),
    }
    for (epochs, start, cycles, free_bits), expected in cases.items():
        options = dict(anneal_epochs=epochs, anneal_start=start, anneal_cycles=cycles)
        objective = _built(runs.training_objective({**OPTIONS, **options, "free_bits": free_bits}))
        assert isinstance(objective, KLControlledELBO) and repr(objective) == expected


# --- M2 ----------------------------------------------------------------------------------------


def test_m2_alpha_defaults_to_46_per_labelled_image():
    assert runs.m2_alpha(100) == pytest.approx(4600.0)  # Pyro's SS-VAE example
    assert runs.m2_alpha(100, 5.0) == 5.0 and runs.m2_alpha(100, 0.0) == 0.0


def test_m2_gets_its_own_defaults_on_a_new_run_only():
    parsed = vars(build_parser().parse_args(["train", "--model", "m2", "--latent", "3"]))
    options = runs.check_options(parsed, given={"model", "latent"})
    expected = {**runs.M2_DEFAULTS, "latent": 3}  # a given option keeps its value
    assert {k: options[k] for k in expected} == expected
    assert options["labelled_schedule"] == "alternate" and options["init"] == "small"
    assert options["labelled_passes"] == "auto"
    assert runs.data_config(options)["binarize"] == "dynamic"  # --binarize auto, for M2
    resumed = runs.check_options({**parsed, "resume": True, "latent": 20}, given={"model"})
    assert resumed["latent"] == 20  # a resume keeps the stored values
    vae = runs.check_options(vars(build_parser().parse_args(["train"])), given=set())
    assert vae["latent"] == 20 and vae["hidden"] == (400,)
    for flag in ("init", "labelled_schedule", "labelled_passes"):
        with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} applies to --model m2"):
            runs.check_options({**OPTIONS}, given={flag})


def test_labelled_passes_need_the_alternate_schedule():
    parsed = vars(build_parser().parse_args(["train", "--model", "m2"]))
    joint = {**parsed, "labelled_schedule": "joint", "labelled_passes": 3}
    with pytest.raises(ValueError, match="--labelled-passes 3 needs --labelled-schedule alternate"):
        runs.check_options(joint, given={"model", "labelled_schedule", "labelled_passes"})
    assert build_parser().parse_args(["train", "--labelled-passes", "4"]).labelled_passes == 4
    with pytest.raises(SystemExit):  # argparse's one line: not "auto" nor an int >= 1
        build_parser().parse_args(["train", "--labelled-passes", "0"])


def test_m2_recipe_fills_alpha_and_the_classification_term(digits):
    options = _options(model="m2", labels_per_class=3)
    assert options["loss"] == runs.M2_LOSS == "enum"
    recipe = runs.training_recipe(options, digits)
    assert recipe.options["alpha"] == pytest.approx(46 * 30)
    assert recipe.num_labelled == 30 and recipe.loss == "enum"
    assert recipe.streams.labelled.schedule == "alternate"
    assert recipe.streams.labelled.passes == "auto"  # resolved by train, from the batch counts
    term = recipe.streams.labelled.loss
    assert isinstance(term, AuxiliaryTerm) and term.loss == "trace"
    assert term.weight == pytest.approx(recipe.options["alpha"] / 30)
    assert term.term == recipe.model.classifier_nll
    given = runs.training_recipe(_options(model="m2", labels_per_class=3, alpha=6.0), digits)
    assert given.options["alpha"] == 6.0 and given.streams.labelled.loss.weight == 0.2


def test_m2_labelled_stream_weighs_the_term_per_labelled_image(digits):
    m2 = M2(64, num_classes=10, latent_dim=2, hidden=(8,))
    labelled = digits.train.subset(torch.arange(20))
    stream = runs.m2_labelled_stream(m2, labelled, alpha=4.0)
    assert stream.data[0] is labelled and torch.equal(stream.data[1], labelled.y)
    assert stream.loss.weight == pytest.approx(0.2)


def test_training_streams_per_model(digits):
    vae = runs.training_streams({"model": "vae"}, digits)
    assert vae.data is digits.train and vae.val_data is digits.val and vae.labelled is None
    cvae = runs.training_streams({"model": "cvae"}, digits)
    assert cvae.data[0] is digits.train and torch.equal(cvae.val_data[1], digits.val.y)
    m2 = runs.training_streams({"model": "m2", "labels_per_class": 4, "seed": 0}, digits)
    x_l, y_l = m2.labelled.data
    assert len(x_l) == 40 and torch.equal(torch.bincount(y_l), torch.full((10,), 4))
    assert len(m2.data) + 40 == len(digits.train) and m2.labelled.loss is None
    with pytest.raises(ValueError):
        runs.training_streams({"model": "m2", "labels_per_class": 1000, "seed": 0}, digits)


# --- options and config ------------------------------------------------------------------------


def test_data_config_resolves_binarize():
    assert runs.data_config(OPTIONS)["binarize"] == "static"
    assert runs.data_config({**OPTIONS, "likelihood": "gaussian"})["binarize"] is None
    assert runs.data_config({**OPTIONS, "binarize": "none"})["binarize"] is None
    assert runs.data_config({**OPTIONS, "binarize": "dynamic"})["binarize"] == "dynamic"


def test_check_options_refuses_what_does_not_apply():
    with pytest.raises(ValueError, match="--alpha applies to --model m2"):
        _options(alpha=3.0)
    with pytest.raises(ValueError, match="--flows applies to --model vae"):
        _options(model="cvae", flows=2)
    with pytest.raises(ValueError, match="--free-bits reshapes"):
        _options(loss="iwae", free_bits=0.5)
    # which loss takes which option: the registry's settings (runs/losses.py)
    with pytest.raises(ValueError, match="--iwae-k sets the particles of --loss iwae or iwae-dreg"):
        _options(loss="stl", iwae_k=7)
    assert _options(loss="iwae-dreg", iwae_k=7)["iwae_k"] == 7
    with pytest.raises(ValueError, match="--anneal-epochs reshapes the single-sample ELBO"):
        _options(loss="iwae-dreg", anneal_epochs=2.0)
    with pytest.raises(ValueError, match="--download needs --root"):
        _options(dataset="mnist", download=True)
    assert _options(download=True)["download"]  # digits ships with scikit-learn: nothing to fetch
    assert _options(model="m2")["labels_per_class"] == runs.M2_LABELS_PER_CLASS


def test_an_old_run_without_the_added_options_loads_and_resumes(tmp_path):
    out = tmp_path / "run"
    _train_run(out)
    config = json.loads((out / "config.json").read_text())
    for name in runs.ADDED_RUN_OPTIONS:  # as a run written before these options existed
        config["options"].pop(name)
    config.pop("model")
    runs.write_config(out, config)
    assert runs.load_run(out).kind == "vae"
    options, stored, done = runs.check_resume({**OPTIONS, "epochs": 2}, {"epochs"}, out)
    assert done == 1 and stored == config
    assert options["flows"] == 0 and options["model"] == "vae" and options["hidden"] == (16,)
    resumed = runs.record_resume(stored, options, done)
    assert resumed["resumes"] == [{"from_epoch": 1, "changed": {"epochs": [1, 2]}}]
    with pytest.raises(ValueError, match=r"--latent 3 \(the run has 2\)"):
        runs.check_resume({**OPTIONS, "latent": 3, "epochs": 2}, {"latent", "epochs"}, out)


def test_write_text_atomic_fails_in_one_line_and_keeps_the_file(tmp_path, monkeypatch):
    path = runs.write_text_atomic(tmp_path / "a.json", "old")
    assert path.read_text() == "old"

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pyro_vae.infer.runtime.files.os.replace", full)
    with pytest.raises(OSError) as info:
        runs.write_text_atomic(path, "new")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


# --- reports -----------------------------------------------------------------------------------


def test_khat_buckets_follow_the_psis_thresholds():
    from pyro_vae.infer.evidence.psis import KHAT_GOOD, KHAT_OK

    khat = torch.tensor([-float("inf"), KHAT_GOOD, KHAT_GOOD + 1e-6, KHAT_OK, KHAT_OK + 1e-6])
    summary = runs.khat_summary(khat)
    assert summary["good (<= 0.5)"] == 2  # k <= KHAT_GOOD
    assert summary["ok (0.5, 0.7]"] == 2  # KHAT_GOOD < k <= KHAT_OK
    assert summary["bad (> 0.7)"] == 1  # k > KHAT_OK


def test_iwae_ks():
    assert runs.iwae_ks(None, 50) == [1, 10]
    assert runs.iwae_ks([10, 1, 10], 50) == [1, 10]
    with pytest.raises(ValueError, match="--iwae-k 100 exceeds --num-samples 50"):
        runs.iwae_ks([1, 100], 50)


# --- kept reports, strict JSON ------------------------------------------------------------------


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def test_json_text_writes_non_finite_numbers_as_null(tmp_path):
    from pyro_vae.infer.runtime.files import json_text, write_json

    value = {"nan": float("nan"), "row": [float("inf"), -float("inf"), 1.5], "pair": (2, "x")}
    expected = {"nan": None, "row": [None, None, 1.5], "pair": [2, "x"]}
    assert json.loads(json_text(value), parse_constant=_refuse_constant) == expected
    path = write_json(tmp_path / "a.json", value)
    assert json.loads(path.read_text(), parse_constant=_refuse_constant) == expected
    assert "NaN" in json.dumps(value)  # what the plain dump would have written


@pytest.mark.parametrize("command", ["evaluate", "certify", "diagnose"])
def test_a_report_is_named_by_every_setting_that_changes_it(command):
    from pyro_vae.runs.archive import report_name

    parser = build_parser()
    changed = {  # one setting each, as a user would change it
        "evaluate": [["--num-samples", "7"], ["--num-points", "9"], ["--batch-size", "3"],
                     ["--seed", "2"], ["--iwae-k", "1,5"], ["--estimator", "ais"],
                     ["--estimator", "auto"]],
        "certify": [["--num-points", "9"], ["--steps", "5,50"], ["--seed", "2"],
                    ["--ais-chains", "3"], ["--ais-leapfrog", "2"], ["--ais-schedule", "linear"]],
        "diagnose": [["--num-points", "9"], ["--gap-points", "3"], ["--gap-steps", "4"],
                     ["--nuts-points", "1"], ["--chains", "3"], ["--warmup", "5"],
                     ["--draws", "6"], ["--seed", "2"]],
    }[command]  # fmt: skip
    names = [report_name(command, vars(parser.parse_args([command, "r", *c]))) for c in changed]
    default = report_name(command, vars(parser.parse_args([command, "r"])))
    assert len({default, *names}) == len(names) + 1, (default, names)
    # settings that change no number (threads, quiet) leave the name as it is
    assert report_name(command, vars(parser.parse_args([command, "r", "--threads", "2"]))) == (
        default
    )
    ais = [command, "r", "--estimator", "ais"] if command == "evaluate" else [command, "r"]
    for option in ("--ais-chains", "--ais-leapfrog"):  # AIS settings name an AIS report
        if command != "diagnose":
            with_ais = vars(parser.parse_args([*ais, option, "3"]))
            assert report_name(command, with_ais) != report_name(
                command, vars(parser.parse_args(ais))
            )
    assert "/" not in default and " " not in default
    if command == "evaluate":  # torchrun's processes each draw their own: a report of its own
        options = vars(parser.parse_args([command, "r"]))
        assert report_name(command, {**options, "processes": 2}) == default + "-P2"
        assert report_name(command, {**options, "processes": 1}) == default


# --- what to trust: the AIS certification and the ladder ---------------------------------------


def test_ais_certifies_only_with_enough_chains_and_a_small_standard_error():
    from pyro_vae.runs.certified import AIS_MAX_STDERR, AIS_MIN_CHAINS, ais_certified

    stderr = torch.tensor([0.0, AIS_MAX_STDERR, 2 * AIS_MAX_STDERR, float("nan")])
    certified, reason = ais_certified(stderr, AIS_MIN_CHAINS)
    assert certified.tolist() == [True, True, False, False] and reason is None
    # one chain has no spread to judge by: nothing is certified, and the reason says so
    certified, reason = ais_certified(torch.zeros(3), 1)
    assert not certified.any() and "1 AIS chain per point, fewer than the 8" in reason
    assert "--ais-chains 8" in reason


def _ladder_report(ais, ais_minus_is=(0.0, 0.01)):
    """A report whose ladder is ELBO -100, L_10 -99, IS -98, AIS ``ais``."""
    ladder = [["ELBO", -100.0], ["L_10", -99.0], ["IS (L = 100)", -98.0], ["AIS", ais]]
    return {"ladder": ladder, "trusted": {"ais": {"mean_ais_minus_is": ais_minus_is}}}


def test_the_ladder_prints_an_inequality_only_where_it_holds():
    from pyro_vae.runs.reports import ladder_text

    holds = ladder_text(_ladder_report(-97.5))
    assert holds == "ELBO -100.00 <= L_10 -99.00 <= IS (L = 100) -98.00 <= AIS -97.50"
    # AIS far below IS (as with --ais-steps 1): ">" and the step named, with its fix
    broken = ladder_text(_ladder_report(-103.0, (-5.0, 0.5)))
    assert "IS (L = 100) -98.00 > AIS -103.00" in broken and "<= AIS" not in broken
    assert broken.endswith("(AIS below IS: T too small (--ais-steps) or too few chains "
                           "(--ais-chains))")  # fmt: skip
    # below by less than 2 standard errors of the difference: said to be noise
    noise = ladder_text(_ladder_report(-98.01, (-0.01, 0.02)))
    assert "> AIS -98.01 (AIS below IS by 0.010 ± 0.020 nats: within 2 standard errors)" in noise
