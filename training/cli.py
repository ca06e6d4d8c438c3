"""`vae data`, `vae train`, `vae eval` and `vae sample`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from repository.errors import CommandError

# `vae eval`'s pace, measured: k = 5000 over MNIST's 10,000 test images, 50 million decodes, took
# 5,546 s on 2 CPU cores (docs/results.md), about 9,000 decodes a second.
DECODES_PER_SECOND = 9_000
MNIST_TEST_IMAGES = 10_000


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


def _claim_run_dir(run: Path, outputs: list[str], *, resume: bool, force: bool) -> None:
    """Refuse a run directory that holds a run, unless told to continue it or to start over (clear it)."""
    found = [name for name in outputs if (run / name).exists()]
    if not found or resume:
        return
    if not force:
        raise CommandError(
            f"{run} already holds a run ({', '.join(found)}); pass --resume to continue it, "
            "or --force to start over (deletes them)"
        )
    # Under torchrun every process gets here; rank 0 clears, as only rank 0 writes.
    if int(os.environ.get("RANK", "0")) == 0:
        for name in found:
            path = run / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _train(args: argparse.Namespace) -> int:
    from training import checkpoint as ckpt
    from training.config import load_recipe
    from training.train import METRICS, TENSORBOARD, train

    recipe = _apply_overrides(load_recipe(_recipe_path(args.recipe)), args.set)
    # Snapshots of an earlier run would sit on a new run's curve as if they were its own.
    snapshots = sorted(p.name for p in args.run.glob(ckpt.SNAPSHOT_GLOB))
    outputs = [ckpt.LAST, ckpt.BEST, METRICS, TENSORBOARD, *snapshots]
    _claim_run_dir(args.run, outputs, resume=args.resume, force=args.force)
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


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _warn_if_long(k: int, subset: int, start: int) -> None:
    """Say on stderr how long the evaluation will take, when that is over a minute."""
    images = subset or max(0, MNIST_TEST_IMAGES - start)
    seconds = images * k / DECODES_PER_SECOND
    if seconds > 60:
        print(
            f"vae eval: {images:,} test images x k={k} = {images * k:,} decodes: about {_duration(seconds)} "
            "on 2 CPU cores (docs/results.md); a smaller --k or --subset is quicker",
            file=sys.stderr,
        )


def _eval(args: argparse.Namespace) -> int:
    _warn_if_long(args.k, args.subset, args.start)
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
        workers=args.workers,
    )
    print(json.dumps(report, indent=2))
    return 0


def _curve(args: argparse.Namespace) -> int:
    from training.curve import CURVE_PNG, nll_curve

    curve = nll_curve(
        args.run,
        k=args.k,
        subset=args.subset,
        data_dir=args.data_dir,
        device_name=args.device,
        progress=not args.no_progress,
    )
    for point in curve["snapshots"]:
        print(
            f"epoch {point['epoch']:4d}  {point['train_seconds'] / 60:7.1f} min  "
            f"IW-NLL {point['iw_nll']:.2f} ± {point['iw_nll_stderr']:.2f}"
        )
    print(args.run / CURVE_PNG)
    return 0


def _average(args: argparse.Namespace) -> int:
    from training.average import average_snapshots

    print(average_snapshots(args.run, first_epoch=args.from_epoch, out=args.out))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from training.pictures import write_pictures

    for path in write_pictures(args.run, args.out, data_dir=args.data_dir, seed=args.seed):
        print(path)
    return 0


def _prior_samples(args: argparse.Namespace) -> int:
    from training.pictures import prior_samples_side_by_side

    print(prior_samples_side_by_side(args.versions, args.temperature, args.out, n=args.n, seed=args.seed))
    return 0


def _judge(args: argparse.Namespace) -> int:
    from repository.manifest import read_manifest
    from training.judge import (
        judge_conditional_samples,
        judge_prior_samples,
        load_judge,
        save_judge,
        train_judge,
    )

    if args.judge.is_file():
        judge = load_judge(args.judge)
    else:
        judge = train_judge(epochs=args.judge_epochs, data_dir=args.data_dir)
        args.judge.parent.mkdir(parents=True, exist_ok=True)
        save_judge(judge, args.judge)
        print(f"trained the judge: {judge.test_accuracy:.2%} on the MNIST test set; saved {args.judge}")
    temperatures = tuple(args.temperature)
    if read_manifest(args.version).conditional:
        report = judge_conditional_samples(
            args.version, judge, per_class=args.per_class, temperatures=temperatures, seed=args.seed
        )
    else:
        report = judge_prior_samples(
            args.version,
            judge,
            samples=10 * args.per_class,
            temperatures=temperatures,
            seed=args.seed,
            data_dir=args.data_dir,
        )
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


def register(commands: Any) -> None:
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir", type=Path, default=None, help="dataset cache (default: $VAE_DATA_DIR or ./data)"
    )
    data_dir.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    data_dir.add_argument("--no-progress", action="store_true", help="no progress bar")

    data = commands.add_parser(
        "data",
        parents=[data_dir],
        help="download and convert a dataset once",
        epilog="example:\n  vae data mnist --data-dir data",
    )
    data.add_argument("name", choices=["mnist"])
    data.set_defaults(handler=_data)

    train = commands.add_parser(
        "train",
        parents=[data_dir],
        help="train a VAE from a recipe",
        epilog=(
            "examples:\n"
            "  vae train --recipe default --run runs/default\n"
            "  vae train --run runs/short --set train.epochs=5 --set model.latent_dim=16\n"
            "  vae train --run runs/default --resume"
        ),
    )
    train.add_argument("--recipe", default="default", help="TOML file, or a bundled recipe name")
    # --run-dir is the spelling to use under torchrun, whose argument parser takes a bare --run
    # for an abbreviation of its own --run-path.
    train.add_argument(
        "--run", "--run-dir", dest="run", type=Path, default=Path("runs/default"), help="run directory"
    )
    train.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a recipe value"
    )
    existing = train.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="continue the run in RUN from RUN/last.pt")
    existing.add_argument(
        "--force",
        action="store_true",
        help="start over in a RUN that holds a run: deletes its checkpoints and metrics",
    )
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "eval",
        parents=[data_dir],
        help="test ELBO, IW-NLL, active units",
        description="k = 5000 on all MNIST test images: about 1.5 h on 2 CPU cores; interrupted, it resumes.",
        epilog=(
            "examples:\n"
            "  vae eval runs/default --k 5000 --workers 2\n"
            "  vae eval models/mnist/1 --k 100 --subset 1000 --out eval-quick.json"
        ),
    )
    evaluate.add_argument("run", type=Path, help="a run directory, or an exported version (models/NAME/N)")
    evaluate.add_argument("--k", type=int, default=5000, help="importance samples per image")
    evaluate.add_argument("--out", type=Path, default=None, help="report file (default: RUN/eval.json)")
    evaluate.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    evaluate.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the threads; on CPU, one a core is the fastest (the same figures)",
    )
    evaluate.add_argument("--subset", type=int, default=0, help="only N test images (0 = all)")
    evaluate.add_argument("--start", type=int, default=0, help="index of the first test image")
    evaluate.add_argument("--batch-decodes", type=int, default=5000, help="decodes per forward pass")
    evaluate.set_defaults(handler=_eval)

    curve = commands.add_parser(
        "curve",
        parents=[data_dir],
        help="IW-NLL of a run's epoch snapshots against training time",
        description=(
            "Evaluates every epoch-NNN.pt that `train.snapshot_every` kept, on a test subset at a small "
            "k, and writes RUN/curve.json and RUN/curve.png (with the validation -ELBO of every epoch)."
        ),
        epilog="example:\n  vae curve runs/default --k 100 --subset 1000",
    )
    curve.add_argument("run", type=Path, help="run directory")
    curve.add_argument("--k", type=int, default=100, help="importance samples per image")
    curve.add_argument("--subset", type=int, default=1000, help="the first N test images (0 = all)")
    curve.set_defaults(handler=_curve)

    average = commands.add_parser(
        "average",
        help="average a run's epoch snapshots into one model (stochastic weight averaging)",
        description=(
            "Writes the uniform average of the weights of every epoch-NNN.pt that `train.snapshot_every` "
            "kept (from --from-epoch on) to RUN/averaged.pt, a checkpoint to evaluate and export."
        ),
        epilog=(
            "example:\n  vae average runs/v3-trainval\n"
            "  vae export runs/v3-trainval/averaged.pt --repo models --name mnist-flow"
        ),
    )
    average.add_argument("run", type=Path, help="run directory")
    average.add_argument("--from-epoch", type=int, default=1, help="the first snapshot's epoch")
    average.add_argument("--out", type=Path, default=None, help="checkpoint file (default RUN/averaged.pt)")
    average.set_defaults(handler=_average)

    sample = commands.add_parser(
        "sample",
        parents=[data_dir],
        help="write PNG pictures of a run",
        epilog="example:\n  vae sample runs/default --seed 1",
    )
    sample.add_argument("run", type=Path, help="run directory")
    sample.add_argument("--out", type=Path, default=None, help="default: RUN/pictures")
    sample.add_argument("--seed", type=int, default=0, help="seed of the pictures' random draws")
    sample.set_defaults(handler=_sample)

    prior_samples = commands.add_parser(
        "prior-samples",
        help="one PNG of prior samples from exported versions side by side, at several temperatures",
        description=(
            "Samples each version's own prior and decodes with its decoder graph in onnxruntime, as the "
            "service does: a cell is what `vae client sample --n N --seed SEED --temperature T` returns."
        ),
        epilog=(
            "example:\n  vae prior-samples models/mnist/1 models/mnist/2 --temperature 1 0.8 "
            "--out docs/pictures/prior-samples.png"
        ),
    )
    prior_samples.add_argument("versions", type=Path, nargs="+", help="exported versions (models/NAME/N)")
    prior_samples.add_argument(
        "--temperature", type=float, nargs="+", default=[1.0, 0.8], help="prior temperatures"
    )
    prior_samples.add_argument("--n", type=int, default=64, help="samples per picture")
    prior_samples.add_argument("--seed", type=int, default=0, help="the samples' seed")
    prior_samples.add_argument("--out", type=Path, required=True, help="PNG file to write")
    prior_samples.set_defaults(handler=_prior_samples)

    judge = commands.add_parser(
        "judge",
        parents=[data_dir],
        help="a held-out MNIST classifier reads a version's samples: the class asked for, or which digits",
        description=(
            "Classifies a version's samples with a CNN trained on MNIST's 60,000 training images (trained "
            "and saved to --judge first if that file is missing). A conditional version: how often each "
            "class's samples are read as that class. An unconditional one: the digits its prior samples "
            "are read as, and the share the judge is unsure of, beside the same for the test images."
        ),
        epilog=(
            "examples:\n  vae judge models/mnist-cvae/1 --judge runs/judge.pt --temperature 1 0.8\n"
            "  vae judge models/mnist/2 --judge runs/judge.pt --temperature 1 0.8"
        ),
    )
    judge.add_argument("version", type=Path, help="an exported version's directory")
    judge.add_argument("--judge", type=Path, default=Path("runs/judge.pt"), help="the classifier's file")
    judge.add_argument("--judge-epochs", type=int, default=8, help="epochs, when the judge must be trained")
    judge.add_argument(
        "--per-class", type=int, default=1000, help="samples of each class (unconditional: 10x this in all)"
    )
    judge.add_argument("--temperature", type=float, nargs="+", default=[1.0], help="prior temperature(s)")
    judge.add_argument("--seed", type=int, default=0, help="seed of the latents")
    judge.add_argument("--out", type=Path, default=None, help="also write the report to this JSON file")
    judge.set_defaults(handler=_judge)
