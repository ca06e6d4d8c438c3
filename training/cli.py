"""`vae data`, `vae train`, `vae eval` and `vae sample`."""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any


def _recipe_path(name: str) -> Path:
    """A recipe file path, or the name of a bundled recipe (default, pytorch_examples, ...)."""
    path = Path(name)
    if path.suffix == ".toml":
        return path
    bundled = resources.files("training") / "recipes" / f"{name}.toml"
    if not bundled.is_file():
        raise FileNotFoundError(f"no recipe file {name!r} and no bundled recipe named {name!r}")
    return Path(str(bundled))


def _apply_overrides(recipe: Any, pairs: list[str]) -> Any:
    """--set train.epochs=5 model.latent_dim=2: TOML-typed values into a copy of the recipe."""
    import dataclasses
    import tomllib

    from training.config import Recipe, model_config_from_dict, to_dict, train_config_from_dict

    sections = {"model": to_dict(recipe.model), "train": to_dict(recipe.train)}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot or section not in sections:
            raise ValueError(f"--set expects model.KEY=VALUE or train.KEY=VALUE, got {pair!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word is a string
        sections[section][field] = value
    return dataclasses.replace(
        Recipe(),
        model=model_config_from_dict(sections["model"]),
        train=train_config_from_dict(sections["train"]),
    )


def _data(args: argparse.Namespace) -> int:
    from training.data import prepare_mnist

    path = prepare_mnist(args.data_dir)
    print(f"MNIST ready at {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.config import load_recipe
    from training.train import train

    recipe = _apply_overrides(load_recipe(_recipe_path(args.recipe)), args.set)
    train(
        recipe.model,
        recipe.train,
        args.run,
        data_dir=args.data_dir,
        device_name=args.device,
        resume=args.resume,
        progress=not args.no_progress,
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_run

    report = evaluate_run(
        args.run,
        k=args.k,
        subset=args.subset,
        first_image=args.start,
        data_dir=args.data_dir,
        device_name=args.device,
        batch_decodes=args.batch_decodes,
        progress=not args.no_progress,
        out=args.out,
        threads=args.threads,
    )
    print(json.dumps(report, indent=2))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from training.pictures import write_pictures

    for path in write_pictures(args.run, args.out, data_dir=args.data_dir, seed=args.seed):
        print(path)
    return 0


def register(commands: Any) -> None:
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir", type=Path, default=None, help="dataset cache (default: $VAE_DATA_DIR or ./data)"
    )
    data_dir.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    data_dir.add_argument("--no-progress", action="store_true", help="no progress bar")

    data = commands.add_parser("data", parents=[data_dir], help="download and convert a dataset once")
    data.add_argument("name", choices=["mnist"])
    data.set_defaults(handler=_data)

    train = commands.add_parser("train", parents=[data_dir], help="train a VAE from a recipe")
    train.add_argument("--recipe", default="default", help="TOML file, or a bundled recipe name")
    # --run-dir is the spelling to use under torchrun, whose argument parser takes a bare --run
    # for an abbreviation of its own --run-path.
    train.add_argument(
        "--run", "--run-dir", dest="run", type=Path, default=Path("runs/default"), help="run directory"
    )
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    train.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", parents=[data_dir], help="test ELBO, IW-NLL, active units")
    evaluate.add_argument("run", type=Path, help="a run directory, or an exported version (models/NAME/N)")
    evaluate.add_argument("--k", type=int, default=5000, help="importance samples per image")
    evaluate.add_argument("--out", type=Path, default=None, help="report file (default: RUN/eval.json)")
    evaluate.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    evaluate.add_argument("--subset", type=int, default=0, help="only N test images (0 = all)")
    evaluate.add_argument("--start", type=int, default=0, help="index of the first test image")
    evaluate.add_argument("--batch-decodes", type=int, default=5000, help="decodes per forward pass")
    evaluate.set_defaults(handler=_eval)

    sample = commands.add_parser("sample", parents=[data_dir], help="write PNG pictures of a run")
    sample.add_argument("run", type=Path)
    sample.add_argument("--out", type=Path, default=None, help="default: RUN/pictures")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(handler=_sample)
