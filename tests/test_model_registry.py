"""The model registry (pyro_vae/runs/models.py): one entry is all a new model needs, and no
model or loss name is compared with a string outside the two registries."""

import ast
from pathlib import Path

import pytest

import pyro_vae.runs as runs
from pyro_vae.cli import build_parser, main
from pyro_vae.infer.objectives.registry import LOSSES
from pyro_vae.models.vae import VAE
from pyro_vae.runs.config import ADDED_RUN_OPTIONS, RUN_OPTIONS
from pyro_vae.runs.models import (
    MODEL_OPTIONS,
    MODEL_REGISTRY,
    ModelKind,
    ModelOption,
    check_model_options,
    register_model,
    unregister_model,
)

PACKAGE = Path(__file__).resolve().parent.parent / "pyro_vae"
REGISTRIES = {PACKAGE / "runs" / "models.py", PACKAGE / "infer" / "objectives" / "registry.py"}
"""The only modules that may compare a model's or a loss's name with a string."""


# --- no name compared outside the registries ---------------------------------------------------


def _named_literals(node: ast.AST, names: set) -> list[str]:
    """The registered names among the string literals a comparison operand is or holds."""
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return [i.value for i in items if isinstance(i, ast.Constant) and i.value in names]


def name_comparisons(source: str, names: set) -> list[str]:
    """Every comparison (``==``, ``!=``, ``in``, ``not in``) of a string literal in ``names``
    (``kind == "m2"``, ``loss != "iwae"``, ``"cvae" in kinds``, ``kind in ("vae", "m2")``), every
    ``case "m2":``, and every dict keyed by two names or more (``{"vae": ..., "m2": ...}[kind]``).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = any(_named_literals(operand, names) for operand in operands)
        elif isinstance(node, ast.MatchValue):
            named = bool(_named_literals(node.value, names))
        elif isinstance(node, ast.Dict):
            named = len(_named_literals(ast.Tuple([k for k in node.keys if k]), names)) > 1
        else:
            continue
        if named:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_catches_a_name_compared_as_a_string():
    names = {"m2", "iwae"}
    source = (
        'if options["model"] == "m2": pass\nif "iwae" != loss: pass\nok = kind in ("m2", "x")\n'
        'match kind:\n    case "m2": pass\nwhat = {"m2": 1, "iwae": 2}[kind]'
    )
    caught = name_comparisons(source, names)
    assert len(caught) == 5, caught
    allowed = 'if entry.semi_supervised: pass\nname = "m2"\nrow = {"m2": 1, "x": 2}'
    assert not name_comparisons(allowed, names)


def test_no_model_or_loss_name_is_compared_outside_the_registries():
    names = set(MODEL_REGISTRY) | set(LOSSES)
    found = [
        f"{path.relative_to(PACKAGE.parent)} {where}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in REGISTRIES
        for where in name_comparisons(path.read_text(), names)
    ]
    assert not found, "ask the registry's entry instead:\n" + "\n".join(found)


# --- one entry adds a model --------------------------------------------------------------------


class ToyVAE(VAE):
    """A VAE under another name: a model known to nothing but its registry entry."""


def _toy_arguments(options, data):
    return dict(arch=options["arch"], flows=options["flows"])


@pytest.fixture
def toy():
    kind = ModelKind(ToyVAE, "a VAE by another name", "toy VAE", _toy_arguments, ("flows", "arch"))
    register_model("toy", kind)
    yield "toy"
    unregister_model("toy")
    assert "toy" not in MODEL_REGISTRY


@pytest.mark.slow  # one training run through the command line, with its figures
def test_one_entry_is_enough_to_train_and_reload_a_model(toy, tmp_path, capsys):
    parser = build_parser()
    assert parser.parse_args(["train", "--model", toy]).model == toy  # a choice of --model
    assert runs.MODELS[toy] is ToyVAE  # the public view follows the registry
    out = tmp_path / "run"
    argv = ["train", "--model", toy, "--dataset", "digits", "--epochs", "1", "--latent", "2"]
    assert main([*argv, "--hidden", "8", "--compile", "off", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "toy VAE" in said and "(test log p(x) by importance sampling)" in said
    run = runs.load_run(out)
    assert run.kind == toy and type(run.vae) is ToyVAE and not run.conditional


def test_the_model_help_lists_every_entry(toy, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "toy, a VAE by another name" in help_text and "cvae, the conditional VAE" in help_text


def test_register_refuses_a_taken_name_and_an_unknown_option():
    with pytest.raises(ValueError, match="'vae' is registered already"):
        register_model("vae", MODEL_REGISTRY["vae"])
    kind = ModelKind(ToyVAE, "help", "toy", options=("components",))
    with pytest.raises(ValueError, match="takes --components, which MODEL_OPTIONS"):
        register_model("toy", kind)
    assert "toy" not in MODEL_REGISTRY


def test_an_option_is_refused_by_what_the_entry_takes(toy):
    base = {"flows": 0, "arch": "mlp", "labelled_passes": "auto", "labelled_schedule": "joint"}
    options = {**base, "model": toy, "loss": "trace", "labels_per_class": None}
    assert check_model_options(dict(options), set()) == options  # nothing given, nothing set
    with pytest.raises(ValueError, match="--alpha applies to --model m2, not --model toy"):
        check_model_options(dict(options), {"alpha"})
    # the toy takes what the VAE takes: the refusal names every model that takes the option
    with pytest.raises(ValueError, match="--flows applies to --model vae or --model toy, not"):
        check_model_options({**options, "model": "cvae", "flows": 2}, set())


def test_a_models_own_option_is_one_entry_of_model_options(monkeypatch):
    option = ModelOption(argument=dict(type=int, default=3, help="--model toy: components K"))
    monkeypatch.setitem(MODEL_OPTIONS, "components", option)
    kind = ModelKind(ToyVAE, "help", "toy", _toy_arguments, ("flows", "arch", "components"))
    register_model("toy", kind)
    try:
        parser = build_parser()  # the parser declares it from the table
        toy = parser.parse_args(["train", "--model", "toy", "--components", "5"])
        assert toy.components == 5
        options = vars(parser.parse_args(["train", "--components", "5"]))
        refusal = "--components applies to --model toy, not --model vae"
        with pytest.raises(ValueError, match=refusal):
            check_model_options(options, {"components"})
    finally:
        unregister_model("toy")


def test_every_model_option_defines_the_run():
    # a resume must keep it, and an old run without it must read as it was trained
    assert set(MODEL_OPTIONS) <= set(RUN_OPTIONS)
    assert set(MODEL_OPTIONS) - {"arch"} <= set(ADDED_RUN_OPTIONS)  # --arch came first
