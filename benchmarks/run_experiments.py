"""Run the experiment configs and write a results table (markdown) and plots.

    python benchmarks/run_experiments.py --out benchmarks/results            # everything
    python benchmarks/run_experiments.py --only numenta --epochs 5           # one family, shorter

Each experiment is a config from configs/ built through the `ksparse-pl` CLI (so it is exactly what a
user runs), with the logger off and the overrides listed in EXPERIMENTS. MNIST figures use the MNIST
*test split* in ../shared/data (10,000 images), split stratified 7,000 train / 1,000 val / 2,000 test:
never a full-MNIST figure.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ksparse_pl.callbacks import FeatureGridLogger, NoiseRobustness
from ksparse_pl.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist-t10k"


def mnist_subset(out: Path) -> Path:
    """The shared MNIST test split as an .npz for ArrayDataModule."""
    path = out / "mnist_t10k.npz"
    if not path.exists():
        images = np.frombuffer(
            gzip.decompress((SHARED_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8
        )
        labels = np.frombuffer(gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:], np.uint8)
        np.savez_compressed(path, x=images.reshape(-1, 28, 28), y=labels)
    return path


def _gunzip(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def mnist_data(npz: Path, flatten: bool = False) -> list[str]:
    """The MNIST subset instead of torchvision's download. With 7,000 training images (not 60,000) plain SGD
    gets about a tenth of the paper's updates, so every net, dense and sparse alike, gets momentum 0.9."""
    return [
        "--data=ksparse_pl.data.ArrayDataModule",
        f"--data.path={npz}",
        "--data.val_fraction=0.1",
        "--data.test_fraction=0.2",
        "--data.batch_size=64",
        "--model.init_args.optimizer.init_args.momentum=0.9",
    ] + (["--data.flatten=true"] if flatten else [])


EXPERIMENTS: dict[str, list[tuple[str, str, bool]]] = {
    # family: (name, config, uses the MNIST subset)
    "numenta": [
        ("Dense MLP", "numenta/dense_mlp.yaml", True),
        ("Sparse MLP", "numenta/sparse_mlp.yaml", True),
        ("Dense CNN-2", "numenta/dense_cnn2.yaml", True),
        ("Sparse CNN-2", "numenta/sparse_cnn2.yaml", True),
    ],
    "cottonwood": [
        ("dense", "cottonwood/dense.yaml", False),
        ("sparse k=9", "cottonwood/sparse.yaml", False),
        ("sparse k=9 + sensitivity", "cottonwood/sparse_sensitivity.yaml", False),
    ],
    "penalty": [
        ("ReLU", "penalty/relu.yaml", False),
        ("ReLU + mean-activation penalty", "penalty/relu_penalty.yaml", False),
    ],
    "makhzani": [("k-sparse AE on digits", "makhzani/digits.yaml", False)],
}


def topic_alignment(codes: torch.Tensor, topics: torch.Tensor, num_topics: int) -> float:
    """Mean over active units of the largest |correlation| between the unit and a topic indicator."""
    indicators = torch.nn.functional.one_hot(topics, num_topics).float()
    c = (codes - codes.mean(0)) / codes.std(0).clamp_min(1e-8)
    t = (indicators - indicators.mean(0)) / indicators.std(0).clamp_min(1e-8)
    correlation = (c.t() @ t) / len(codes)  # (units, topics)
    active = codes.std(0) > 0
    return float(correlation.abs().max(dim=1).values[active].mean()) if active.any() else 0.0


def run(family: str, name: str, config: str, overrides: list[str], root: Path, epochs: int | None) -> dict[str, Any]:
    args = [
        "--config",
        str(ROOT / "configs" / config),
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
        *overrides,
    ]
    if epochs is not None:
        args.append(f"--trainer.max_epochs={epochs}")
    cli = build_cli(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    result: dict[str, Any] = {
        "family": family,
        "name": name,
        "config": config,
        "epochs": cli.trainer.current_epoch,
        "seconds": round(time.perf_counter() - start, 1),
    }
    result.update({k: float(v) for k, v in cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0].items()})
    for callback in cli.trainer.callbacks:
        if isinstance(callback, NoiseRobustness):
            result["noise_score"] = callback.score
            result["noise_accuracy"] = {f"{k:.2f}": round(v, 4) for k, v in callback.results.items()}
        if isinstance(callback, FeatureGridLogger) and callback.saved:
            result["feature_grid"] = str(callback.saved[-1])
    if getattr(cli.model, "probe_accuracy", None) is not None:
        result["probe_accuracy"] = cli.model.probe_accuracy
        result["raw_probe_accuracy"] = cli.model.run_linear_probe()["probe/raw_accuracy"]
    if family == "penalty":
        dm, model = cli.datamodule, cli.model.eval()
        with torch.no_grad():
            codes = model.encode(dm.test_set.tensors[0])
        result["zero_share"] = float((codes == 0).float().mean())
        result["topic_alignment"] = topic_alignment(codes, dm.test_set.tensors[1], dm.num_topics)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--only", choices=sorted(EXPERIMENTS), action="append")
    parser.add_argument("--epochs", type=int, default=None, help="override every config's max_epochs")
    parser.add_argument("--results", default="results.json", help="file name of the results, under --out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    npz = mnist_subset(args.out)
    results = []
    for family in args.only or list(EXPERIMENTS):
        for name, config, uses_mnist in EXPERIMENTS[family]:
            overrides = mnist_data(npz) if uses_mnist else []
            print(f"== {family}: {name} ({config})", flush=True)
            result = run(family, name, config, overrides, args.out / Path(config).with_suffix(""), args.epochs)
            print(json.dumps(result), flush=True)
            results.append(result)
            (args.out / args.results).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
