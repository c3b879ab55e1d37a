"""The `neuronscope` command: a thin layer over the public Python API.

User mistakes (a wrong layer name, shape, file) exit with code 2 and one paragraph, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

import numpy as np

from . import __version__
from .errors import NeuronscopeError, OptionError

DESCRIPTION = """\
neuronscope: a microscope for your own PyTorch model.

Shows what a trained network learned, with evidence: what its first layer looks for, what every
layer does with an input, which units are dead, which real inputs excite each unit, what input
each unit and class wants most, which parts of an input drove a decision, and, for networks on
numeric vectors, which columns matter and the exact logistic-regression reading of a one-layer
network, each with the numbers that say how far to trust it.
"""

EPILOG = """\
MODEL is named one way everywhere:
  path/to/file.py:factory   a function returning the nn.Module; add --weights state_dict.pt
  model.pt2                 a torch.export program (its layers can be hooked)
  model.ts / model.pt       a TorchScript file (output-level analyses only)

DATA is an image folder (one subfolder per class), an array file (.npz with x/y, .npy, .pt)
or a table (.csv, .parquet) with --target COLUMN.

examples:
  neuronscope demo                                    # train the demo models, write the report
  neuronscope layers net.py:make_net --weights w.pt --input-shape 3,32,32
  neuronscope filters net.py:make_net --weights w.pt --input-shape 3,32,32 --out filters/
  neuronscope report net.py:make_net --weights w.pt --input-shape 3,32,32 \\
      --mean 0.5 --std 0.5 --classes classes.txt --data images/ --out report/
  neuronscope visualize net.py:make_net --weights w.pt --input-shape 3,32,32 conv3:5 --out vis/
  neuronscope visualize net.py:make_net --weights w.pt --input-shape 3,32,32 class:cat --data images/ --out vis/
  neuronscope explain net.py:make_net --weights w.pt --input-shape 3,32,32 cat.png --target cat --out why/
  neuronscope tabular mlp.py:make --weights w.pt --data table.csv --target y --out cols/
  neuronscope serve report/
"""


def _floats(text: str, what: str) -> list[float]:
    path = Path(text)
    if path.is_file():
        text = path.read_text().replace("\n", ",")
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise NeuronscopeError(f"{what} must be numbers separated by commas (or a file of them); got {text!r}.") from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise NeuronscopeError(
            f"--input-shape {text!r} is not a shape: give C,H,W for images (e.g. 3,32,32) or the "
            "number of columns for vectors (e.g. 8), without the batch dimension."
        )
    return shape


def _classes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if "," not in text and (os.sep in text or text.endswith(".txt")):
        raise NeuronscopeError(f"--classes {text!r}: no such file. Give a file with one class name a line, or a comma list.")
    return [c.strip() for c in text.split(",")]


def _output(text: str | None):
    return int(text) if text is not None and text.lstrip("-").isdigit() else text


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="file.py:factory, a .pt2 export or a TorchScript file")
    g = p.add_argument_group("how the model is loaded and fed")
    g.add_argument("--weights", metavar="PATH", help="state dict for a file.py:factory model (loaded with weights_only=True)")
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow a fully pickled model; this RUNS CODE from the file, so only for files you trust")
    g.add_argument("--input-shape", metavar="C,H,W", help="one example's shape without the batch, e.g. 3,32,32 or 8 (vectors)")
    g.add_argument("--range", metavar="LO,HI", default="0,1", help="raw input value range before normalization (default: 0,1)")
    g.add_argument("--mean", metavar="M[,M...]", help="normalization mean, one value or one per channel/column (or a file)")
    g.add_argument("--std", metavar="S[,S...]", help="normalization std, one value or one per channel/column (or a file)")
    g.add_argument("--classes", metavar="FILE|A,B,..", help="class names in output order: a file with one a line, or a comma list")
    g.add_argument("--output", metavar="INDEX|KEY", help="which element of a tuple/dict model output to explain")
    g.add_argument("--task", choices=["classification", "regression"], help="override the inferred task")
    g.add_argument("--device", default=None, help="cpu or cuda (default: where the model is)")


def _add_data_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DATA", required=required, help="image folder, array file or table")
    g.add_argument("--target", metavar="COLUMN", help="target column of a table")
    g.add_argument("--columns", metavar="A,B,..", help="feature columns of a table (default: all but target and id)")
    g.add_argument("--id-column", metavar="COLUMN", help="a table column holding stable example ids")
    g.add_argument("--limit", type=int, metavar="N", help="use at most N examples for the data pass (default: all)")


def _add_engine_args(p: argparse.ArgumentParser, what: str = "the data pass, feature visualization and attribution",
                     per_task: str | None = None) -> None:
    g = p.add_argument_group(f"cluster ({what})")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="run it in this process, or as shards and tasks on a Ray cluster with the same results "
                        "(needs pip install 'neuronscope[ray]'; default: local)")
    g.add_argument("--address", metavar="ADDR", help="the Ray cluster to join, e.g. auto or ray://head:10001 "
                                                     "(default: start a local one)")
    g.add_argument("--workers", type=int, metavar="N", help="Ray workers, each holding the model once "
                                                            "(default: one per GPU, else one per two CPUs)")
    if per_task:
        g.add_argument("--per-task", type=int, default=64, metavar="N", help=per_task)
        return
    g.add_argument("--shard-size", type=int, default=2048, metavar="N",
                   help="examples per shard (default: 2048): the work a dead worker or an interrupted run "
                        "redoes; each finished shard is kept on disk (~8 KB per unit) until the pass is stored")


def build_parser() -> argparse.ArgumentParser:
    fmt = lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)  # noqa: E731
    parser = argparse.ArgumentParser(prog="neuronscope", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"neuronscope {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("layers", help="list the model's layers, output shapes and parameter counts", formatter_class=fmt,
                       description="List every layer a forward pass meets: the names unit addresses use "
                                   "(layer, layer:channel, layer:channel@y,x, layer#k for reused modules).")
    _add_model_args(p)

    p = sub.add_parser("filters", help="draw the first layer's filters and score their smoothness", formatter_class=fmt,
                       description="First-layer filters as a picture, with a smoothness score per filter: "
                                   "noisy filters (no smoother than fresh random ones) flag an under-trained network.")
    _add_model_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results and report")

    p = sub.add_parser("report", help="analyse a model on its data and write the report site", formatter_class=fmt,
                       description="Run every analysis that fits the model and data (resumable: finished "
                                   "sections are reused), then write a static site into DIR.")
    _add_model_args(p)
    _add_data_args(p, required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results store and the site")
    p.add_argument("--layers", metavar="L1,L2,..", help="layers to analyse (default: activation outputs and the final layer)")
    p.add_argument("--example", metavar="ID", help="id of the input whose activation maps are shown (default: the first)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="examples per forward pass (default: 64)")
    p.add_argument("--visualize", type=int, default=8, metavar="N",
                   help="units per layer that get feature visualizations, plus every class (default: 8; 0 skips)")
    p.add_argument("--vis-steps", type=int, default=256, metavar="N", help="optimization steps per visualization "
                                                                             "(default: 256)")
    p.add_argument("--explain", type=int, default=12, metavar="N",
                   help="inputs explained by attribution, spread over classes, with trust checks (default: 12; 0 skips)")
    _add_engine_args(p)

    p = sub.add_parser("examples", help="find the real inputs that excite each unit most", formatter_class=fmt,
                       description="One streaming pass over the data: for every unit of the chosen layers, its "
                                   "top and bottom examples (with the receptive field of the peak), examples across "
                                   "its range, a histogram of its responses and, with labels, the classes it prefers. "
                                   "Resumes if interrupted; writes the examples pages into DIR.")
    _add_model_args(p)
    _add_data_args(p, required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results store and the site")
    p.add_argument("--layers", metavar="L1,L2,..", help="layers to analyse (default: activation outputs and the final layer)")
    p.add_argument("-k", type=int, default=16, metavar="K", help="top and bottom examples kept per unit (default: 16)")
    p.add_argument("--reduce", choices=["max", "mean"], default="max",
                   help="score a conv unit on an example by its map's max or mean (default: max)")
    p.add_argument("--pictures", type=int, default=64, metavar="N", help="units per layer that get pictures (default: 64)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="examples per forward pass (default: 64)")
    _add_engine_args(p)

    p = sub.add_parser("directions", help="look at a layer as a space: factors, a sparse dictionary, random directions",
                       formatter_class=fmt,
                       description="A layer is a space, not only a basis. For one layer: non-negative factors (NMF; PCA "
                                   "when the layer can go negative) of its activations at every position, a sparse "
                                   "dictionary (TopK sparse autoencoder) with its explained variance, L0 and dead "
                                   "features, the loss when the layer is replaced by each reconstruction, real top "
                                   "examples and class links for every direction, whether its neurons are purer than "
                                   "random directions, and a t-SNE map of the codes the classifier reads. Each "
                                   "direction becomes a unit (layer:nmf3, layer:sae17, layer:dir-1a2b3c4d) with its "
                                   "own page; `neuronscope visualize --store DIR` draws them.",
                       epilog="example: neuronscope directions model.pt --data images/ --layer conv3 --out report/")
    _add_model_args(p)
    _add_data_args(p, required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results store and the pages")
    p.add_argument("--layer", metavar="LAYER", help="the layer (default: the last spatial ReLU layer)")
    p.add_argument("--factors", type=int, default=6, metavar="K", help="NMF factors / principal components (default: 6)")
    p.add_argument("--dictionary-steps", type=int, default=500, metavar="N",
                   help="training steps of the sparse dictionary (default: 500; 0: no dictionary)")
    p.add_argument("--direction", action="append", default=[], metavar="FILE.npy",
                   help="a vector of the layer's channel space (a .npy file) to look at too; becomes "
                        "LAYER:dir-<hash> (repeatable)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="examples per forward pass (default: 64)")

    p = sub.add_parser("visualize", help="draw what input a unit, layer, direction or class wants most", formatter_class=fmt,
                       description="Activation maximization with Lucid's recipe (Fourier + decorrelated colour, "
                                   "transformation robustness, redirected-ReLU warm-up), every target of a layer in one "
                                   "batched run. Writes PNGs (positive from several seeds, negative, diverse set) and "
                                   "evidence.csv: the score reached, its ratio to the largest real score (with --data), "
                                   "seed consistency, and units no input could turn on.",
                       epilog="TARGET is a unit address: 'conv3' (every channel; pick some with --units), 'conv3:5', "
                              "'conv3:5@4,4' (one spatial neuron), 'conv3:nmf2' or 'conv3:sae17' (a direction found by "
                              "`neuronscope directions`, with --store), or 'class:NAME' (several allowed, one layer or "
                              "all classes per call).")
    _add_model_args(p)
    p.add_argument("targets", nargs="+", metavar="TARGET", help="unit addresses or class:NAME")
    p.add_argument("--store", metavar="DIR", help="a report folder whose directions (layer:nmf3, layer:sae17, "
                                                  "layer:dir-...) become drawable targets")
    p.add_argument("--data", metavar="DATA", help="real inputs: colour statistics and the largest real activations; "
                                                  "for models on vectors, the region the search stays in")
    p.add_argument("--target", metavar="COLUMN", help="target column of a table given as --data")
    p.add_argument("--columns", metavar="A,B,..", help="feature columns of a table (default: all but target and id)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (or profiles) and evidence.csv")
    p.add_argument("--units", metavar="A-B|A,B,..", help="units of a whole-layer TARGET (default: all)")
    p.add_argument("--steps", type=int, default=256, metavar="N", help="optimization steps (default: 256)")
    p.add_argument("--seeds", type=int, default=3, metavar="K", help="random starts per target; their agreement is "
                                                                      "reported (default: 3)")
    p.add_argument("--diverse", type=int, default=0, metavar="M", help="also render a diverse set of M images")
    p.add_argument("--no-negative", action="store_true", help="skip the negative (minimizing) visualization")
    p.add_argument("--param", choices=["fourier", "pixel", "maco"], default="fourier",
                   help="image parameterization (maco needs --data; default: fourier)")
    p.add_argument("--decay-power", type=float, default=1.0, metavar="P", help="Fourier damping of high frequencies "
                                                                                 "(default: 1; 0 = flat)")
    p.add_argument("--transforms", choices=["standard", "none"], default="standard",
                   help="robustness transforms: pad, jitter, scale, rotate sized to the image (default: standard)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default: 0.05)")
    p.add_argument("--class-objective", choices=["logit", "logprob"], default="logit",
                   help="maximize the class logit or its log-probability (default: logit)")
    p.add_argument("--accentuate", metavar="ID[,ID..]", help="instead, start from these --data examples and push "
                                                              "the first TARGET while staying close to them")
    p.add_argument("--strength", type=float, default=1.0, help="closeness penalty for --accentuate (default: 1)")
    p.add_argument("--window", metavar="Y0,X0,Y1,X1", help="instead, draw what each class:NAME TARGET wants inside "
                                                          "this window (rows Y0..Y1-1, columns X0..X1-1): grown from "
                                                          "--data's own contents of the window and pasted onto its "
                                                          "images of other classes, with the share of held-out ones "
                                                          "it flips (how the report draws a shortcut)")
    p.add_argument("--seed", type=int, default=0)
    _add_engine_args(p, "feature visualization of many units",
                     per_task="units of a whole-layer TARGET per Ray task (default: 64)")

    p = sub.add_parser("explain", help="show which parts of an input drove an output, with trust checks", formatter_class=fmt,
                       description="Attribution maps from Captum (integrated gradients, SmoothGrad, Grad-CAM, occlusion, "
                                   "... ) for each INPUT, with batch sizes chosen from the model's measured cost and free "
                                   "memory, and the evidence to trust them: the completeness error of integrated "
                                   "gradients, deletion/insertion curves against a random order (Petsiuk et al. 2018) "
                                   "and the model-randomisation sanity check (Adebayo et al. 2018), run on a copy of "
                                   "the model. Writes one PNG per input (the input, then one overlay per method; red "
                                   "pushes the target up, blue down) and explanations.csv; for models on vectors, "
                                   "attributions.csv with one column per input column and a waterfall chart (SVG) "
                                   "per input and signed method, from the baseline's output to the input's.",
                       epilog="INPUT is an image file, or an example id in --data; with --data and no INPUT, the first "
                              "--limit examples (default 8). --target is 'predicted' (default), a class name or index, "
                              "an output index (regression), or a unit such as 'conv3:5' (which parts of the input "
                              "make it fire).")
    _add_model_args(p)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or example ids in --data")
    p.add_argument("--data", metavar="DATA", help="where INPUT ids come from; also the 'mean' baseline")
    p.add_argument("--target", dest="explain_target", default="predicted", metavar="T",
                   help="predicted (default), a class, an output index, or a unit layer:channel")
    p.add_argument("--target-column", metavar="COLUMN", help="target column of a table given as --data")
    p.add_argument("--columns", metavar="A,B,..", help="feature columns of a table (default: all but target and id)")
    p.add_argument("--limit", type=int, default=8, metavar="N", help="with no INPUT, explain the first N examples (default: 8)")
    p.add_argument("--method", metavar="M[,M..]", help="integrated_gradients, saliency, saliency_abs, input_x_gradient, "
                   "smoothgrad, smoothgrad_sq, vargrad, gradcam, occlusion, feature_ablation, gradient_shap "
                   "(default: integrated_gradients,smoothgrad,gradcam,occlusion for images; "
                   "integrated_gradients,feature_ablation,gradient_shap for vectors)")
    p.add_argument("--baseline", default="auto", choices=["auto", "zero", "blur", "mean"],
                   help="what 'absent' means: zero, blur (images), mean of --data (default: mean with --data, else zero)")
    p.add_argument("--layer", metavar="LAYER", help="Grad-CAM's layer (default: the last with a spatial map)")
    p.add_argument("--steps", type=int, default=50, metavar="N", help="integrated-gradients steps (default: 50)")
    p.add_argument("--samples", type=int, default=50, metavar="N", help="SmoothGrad / gradient SHAP samples (default: 50)")
    p.add_argument("--window", type=int, metavar="PX", help="occlusion / ablation patch side (default: 1/8 of the image)")
    p.add_argument("--batch-size", type=int, metavar="ROWS", help="rows per forward inside the methods (default: "
                                                                    "chosen from measured cost and free memory)")
    p.add_argument("--no-checks", action="store_true", help="skip deletion/insertion curves and the randomisation check")
    p.add_argument("--allow-guided", action="store_true", help="allow guided_backprop / guided_gradcam, which fail "
                                                                 "the randomisation sanity check")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs and CSV files")
    p.add_argument("--seed", type=int, default=0)
    _add_engine_args(p, "attribution of many inputs", per_task="inputs per Ray task (default: 64)")

    p = sub.add_parser("tabular", help="which input columns matter, and the logistic-regression reading", formatter_class=fmt,
                       description="For a network on plain numeric vectors (a table): a one-layer network read exactly as "
                                   "the logistic regression (or OLS, or multinomial logit) it is, with standard errors "
                                   "from the Fisher information at its own weights, or the reason that reading does "
                                   "not hold (perfect separation, not a maximum-likelihood fit); for deeper networks, "
                                   "column importance by permutation (with intervals), Shapley value sampling and "
                                   "integrated gradients side by side, partial dependence and ICE curves, interaction "
                                   "strength, and how closely a logistic regression imitates the network. Writes "
                                   "logistic.csv, importance.csv and the report pages into DIR.")
    _add_model_args(p)
    _add_data_args(p, required=True)
    p.add_argument("--group", action="append", metavar="NAME=A,B,..", default=[],
                   help="columns permuted together for importance, e.g. embarked=emb_C,emb_Q,emb_S (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the CSV files, the results store and the pages")

    p = sub.add_parser("demo", help="train the built-in demo models and write their report", formatter_class=fmt,
                       description="Generate the demo data sets (shortcut shapes, digits, tabular), train "
                                   "small models on them (cached after the first run) and report on each.")
    p.add_argument("--out", default="neuronscope-demo", metavar="DIR", help="output folder (default: neuronscope-demo)")
    p.add_argument("--force", action="store_true", help="retrain and recompute everything")

    p = sub.add_parser("serve", help="serve a report folder on http://127.0.0.1", formatter_class=fmt,
                       description="Serve a written report over HTTP on the loopback interface only.")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--port", type=int, default=8000)
    for p in sub.choices.values():  # one-paragraph descriptions, wrapped like the rest of the help
        if p.description and "\n" not in p.description:
            p.description = textwrap.fill(p.description, 100)
        if p.epilog and "\n" not in p.epilog:
            p.epilog = textwrap.fill(p.epilog, 100)
    return parser


def _subject_from_args(args, columns=None, input_shape=None):
    from .loading import load_model
    from .subject import Subject

    loaded = load_model(args.model, weights=args.weights, allow_pickle=args.trust_pickle)
    shape = _shape(args.input_shape) if args.input_shape else input_shape
    if shape is None:
        raise NeuronscopeError("--input-shape is required here: give C,H,W for images (e.g. 3,32,32) or the "
                               "number of columns for vectors (e.g. 8).")
    lo_hi = _floats(args.range, "--range")
    if len(lo_hi) != 2:
        raise NeuronscopeError(f"--range takes two numbers LO,HI; got {args.range!r}.")
    return Subject(
        loaded.module, shape, value_range=tuple(lo_hi),
        mean=_floats(args.mean, "--mean") if args.mean else None,
        std=_floats(args.std, "--std") if args.std else None,
        classes=_classes(args.classes), columns=columns, output=_output(args.output), task=args.task,
        device=args.device, name=Path(str(args.model).split(":")[-1]).name, hookable=loaded.hookable,
        fixed_batch=loaded.fixed_batch, notes=loaded.notes,
    )


def _engine(args):
    """The engine of --engine/--address/--workers/--shard-size; its workers load MODEL the way it
    was given here rather than receiving this process's copy."""
    from .engines import get_engine
    from .engines.ray_engine import ModelSpec

    return get_engine(args.engine, address=args.address, workers=args.workers, shard_size=getattr(args, "shard_size", None),
                      model_spec=ModelSpec(str(args.model), args.weights, args.trust_pickle))


def _report(args) -> int:
    from .data import open_data
    from .pipeline import ReportOptions, report

    shape = _shape(args.input_shape) if args.input_shape else None
    lo_hi = tuple(_floats(args.range, "--range"))
    data = open_data(args.data, input_shape=shape, value_range=lo_hi, target=args.target,
                     columns=args.columns.split(",") if args.columns else None, id_column=args.id_column,
                     classes=_classes(args.classes))
    subject = _subject_from_args(args, columns=data.columns, input_shape=data.input_shape)
    if args.classes is None and data.classes is not None:
        subject.classes = data.classes  # names from the data's class folders or label column
    layers = getattr(args, "layers", None)
    opts = ReportOptions(layers=layers.split(",") if layers else None, limit=args.limit,
                         batch_size=getattr(args, "batch_size", 64), progress=not args.quiet)
    if getattr(args, "engine", "local") != "local":  # report, examples
        opts.engine = _engine(args)
    if args.command == "examples":
        opts.k, opts.reduce, opts.max_units = args.k, args.reduce, args.pictures
        opts.sections = ("overview", "examples")
    elif args.command == "directions":
        opts.sections = ("overview", "directions")
        opts.directions_layer = subject.layer(args.layer).name if args.layer else None
        opts.factors, opts.dictionary_steps = args.factors, args.dictionary_steps
        for path in args.direction:
            layer = opts.directions_layer
            if layer is None:
                raise NeuronscopeError("--direction needs --layer: the layer whose channel space the vector lives in.")
            print(f"{path}: {subject.add_direction(layer, _vector(path))}")
    elif args.command == "tabular":
        if len(data.input_shape) != 1:
            raise NeuronscopeError("neuronscope tabular is for networks on numeric vectors (a table or an array of rows); "
                                   "for images use explain, visualize or report.")
        opts.sections = ("overview", "sanity", "tabular")
        opts.groups = _groups(args.group) or None
    else:
        opts.example = args.example
        opts.featvis_units, opts.featvis_steps = args.visualize, args.vis_steps
        opts.attribution_inputs = args.explain
    index = report(subject, data, args.out, opts)
    if args.command == "tabular":
        return _tabular_files(Path(args.out))
    if args.command == "directions":
        from .store import Store

        summary = Store(args.out).summary("directions")
        for line in [summary["factorization"]["finding"], *summary["findings"],
                     *(x for kind, links in summary["links"].items() if kind != "sae" for x in links["sentences"])]:
            print("- " + line)
    page = {"report": index, "directions": index.with_name("directions.html")}.get(args.command,
                                                                                 index.with_name("examples.html"))
    from .website import site_size

    size, pages = site_size(args.out)
    print(f"{ {'report': 'Report', 'directions': 'Directions'}.get(args.command, 'Dataset examples')} written: {page} "
          f"({size / 2**20:.1f} MB, {pages} pages)\n"
          f"Open it in a browser, or run: neuronscope serve {args.out}")
    return 0


def _vector(path: str):
    import numpy as np

    try:
        v = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise NeuronscopeError(f"--direction {path}: cannot read a .npy vector ({e}).") from None
    if v.ndim != 1:
        raise NeuronscopeError(f"--direction {path}: expected one vector (shape (C,)), got shape {v.shape}.")
    return v


def _groups(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for item in items:
        name, sep, cols = item.partition("=")
        if not sep or not name.strip() or not cols.strip():
            raise NeuronscopeError(f"--group {item!r}: write NAME=COLUMN,COLUMN,... (e.g. embarked=emb_C,emb_Q,emb_S).")
        out[name.strip()] = [c.strip() for c in cols.split(",") if c.strip()]
    return out


def _tabular_files(out: Path) -> int:
    """logistic.csv and importance.csv beside the pages, from the store, for users who script."""
    import csv
    import io

    from .atomic import atomic_write
    from .store import Store

    store = Store(out)
    tables = store.sections()["tabular"]["tables"]
    for name, file in (("logistic", "logistic.csv"), ("importance", "importance.csv")):
        if name in tables:
            t = store.table("tabular", name)
            buf = io.StringIO()
            csv.writer(buf).writerows([list(t)] + [list(r) for r in zip(*t.values())])
            atomic_write(out / file, buf.getvalue().encode())
    s = store.summary("tabular")
    for line in s.get("findings", []):
        print(textwrap.fill(line, 100))
    print(f"\n{'logistic.csv, ' if 'logistic' in tables else ''}importance.csv and the pages written to {out}/ "
          f"(open {out / 'tabular.html'})")
    return 0


def _units(text: str | None) -> list[int] | None:
    if not text:
        return None
    out = []
    try:
        for part in text.split(","):
            a, _, b = part.partition("-")
            out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    except ValueError:
        raise NeuronscopeError(f"--units {text!r}: give unit numbers and ranges, e.g. 0-7 or 1,5,9.") from None
    return out


def _subject_and_optional_data(args, target: str | None):
    """The subject, and the --data it may read (None without --data); class names from the data
    when --classes is not given."""
    from .data import open_data

    data = None
    if args.data:
        data = open_data(args.data, input_shape=_shape(args.input_shape) if args.input_shape else None,
                         value_range=tuple(_floats(args.range, "--range")), classes=_classes(args.classes),
                         target=target, columns=args.columns.split(",") if args.columns else None)
    subject = _subject_from_args(args, columns=data.columns if data is not None else None,
                                 input_shape=data.input_shape if data is not None else None)
    if args.classes is None and data is not None and data.classes is not None:
        subject.classes = data.classes
    return subject, data


def _visualize(args) -> int:
    import csv

    import numpy as np

    from .atomic import atomic_write

    subject, data = _subject_and_optional_data(args, args.target)
    out = Path(args.out)
    if args.store:
        from .analyses.directions.section import load_directions
        from .store import Store

        load_directions(Store(args.store), subject)
    if args.accentuate:
        return _accentuate(args, subject, data, out)
    if args.window:
        return _class_window(args, subject, data, out)
    from .analyses.featvis import visualize
    from .analyses.featvis.visualize import write_pictures

    options = dict(data=data, seeds=args.seeds, negative=not args.no_negative, diverse=args.diverse, steps=args.steps,
                   param=args.param, transforms=args.transforms, decay_power=args.decay_power, lr=args.lr,
                   class_objective=args.class_objective, seed=args.seed)
    if args.engine == "local":
        vis = visualize(subject, args.targets, units=_units(args.units), progress=not args.quiet, **options)
    elif len(args.targets) == 1 and ":" not in args.targets[0]:  # a whole layer: batches of units as tasks,
        layer = subject.layer(args.targets[0])                       # each writing its own pictures
        units = _units(args.units) or range(layer.channels or 1)
        vis = _engine(args).visualize(subject, layer.name, units, per_task=args.per_task, out=out, **options)
    else:
        [vis] = _engine(args).map_calls(subject, data, visualize, [((args.targets,), {
            **options, "units": _units(args.units), "progress": False})], desc="feature visualization")
    if any(len(r.images) for r in vis):  # (with --engine ray on a whole layer the tasks wrote their own)
        write_pictures(vis, out)
    table = vis.tables()["targets"]
    import io

    def write_csv(name, table):
        buf = io.StringIO()
        csv.writer(buf).writerows([list(table)] + [list(row) for row in zip(*table.values())])
        atomic_write(out / name, buf.getvalue().encode())

    write_csv("evidence.csv", table)
    if "profiles" in vis.tables():  # a model on vectors: the best row per target, column by column
        write_csv("profiles.csv", vis.tables()["profiles"])
    print(f"{'target':<24} {'value':>9} {'reached':>9} {'real max':>9} {'ratio':>6} {'seeds agree':>11}")
    for r in vis:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        agree = r.consistency.get("features")
        print(f"{r.target.address:<24} {r.values[0]:>9.3g} "
              f"{(f'{r.reached:.3g}' if r.reached is not None else '-'):>9} "
              f"{(f'{r.real_max:.3g}' if r.real_max is not None else '-'):>9} {ratio:>6} "
              f"{(f'{agree:.2f}' if agree is not None and not np.isnan(agree) else '-'):>11}"
              + ("   UNREACHABLE: stays <= 0, no picture" if not r.reachable else ""))
        if hasattr(vis, "profile"):
            top = ", ".join(f"{c} {z:+.1f} sd" for c, _, z in vis.profile(r.target.address)[:4])
            print(f"{'':<24} most unusual columns: {top}")
    print(f"{'Pictures' if not hasattr(vis, 'profile') else 'Profiles (profiles.csv)'} and evidence.csv written to {out}/")
    return 0


def _class_window(args, subject, data, out: Path) -> int:
    import re

    from .analyses.featvis.patch import class_patch, patch_picture
    from .analyses.featvis.visualize import _parse_targets
    from .analyses.shortcuts import sample_predictions
    from .imaging import save_png

    try:
        region = tuple(int(v) for v in args.window.split(","))
    except ValueError:
        region = ()
    if len(region) != 4:
        raise OptionError(f"--window takes four whole numbers Y0,X0,Y1,X1 (rows Y0..Y1-1, columns X0..X1-1), "
                          f"e.g. 26,26,31,31; got {args.window!r}.")
    if data is None:
        raise NeuronscopeError("--window needs --data: the window's patch space and the images it is pasted on come "
                               "from it.")
    if not all(t.startswith("class:") for t in args.targets):
        raise OptionError("--window draws what a class wants in a window: give class:NAME targets.")
    class_idx, targets = _parse_targets(subject, args.targets, None, None)
    x, pred = sample_predictions(subject, data, limit=2048)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'class':<16} {'flips':>6} {'mean window':>11} {'held out':>8} {'starts agree':>12} {'closest real':>12}")
    for k, t in zip(class_idx, targets):
        cp = class_patch(subject, k, region, x, pred, seeds=args.seeds, steps=args.steps, seed=args.seed,
                         progress=not args.quiet)
        others = np.flatnonzero(pred != k)[:32]
        name = re.sub(r"[^\w.-]+", "_", t.address.split(":", 1)[1]) + "-window"  # a class name as a file name
        save_png(patch_picture(subject, x, cp, others), out / f"{name}.png")
        np.save(out / f"{name}.npy", cp.patch)
        print(f"{t.address[6:]:<16} {cp.flip:>6.0%} {cp.control:>11.0%} {cp.held_out:>8} {cp.agreement:>12.2f} "
              f"{cp.nearest_correlation:>12.2f}")
    print(f"Pictures (every start, the closest real image, an image of another class, the same with the window) and "
          f"the best window as .npy written to {out}/")
    return 0


def _accentuate(args, subject, data, out: Path) -> int:
    from .analyses.featvis import accentuate
    from .analyses.featvis.visualize import _objective, _parse_targets
    from .imaging import input_rgb, save_png, tile_grid, upscale_nearest

    if data is None:
        raise NeuronscopeError("--accentuate needs --data: the examples to start from are read from it.")
    ids = [i.strip() for i in args.accentuate.split(",") if i.strip()]
    x = data.get(ids).x
    class_idx, targets = _parse_targets(subject, args.targets[:1], None, None)
    objective = _objective(subject, targets[:1], class_idx[:1] if class_idx else None, None, args.class_objective)
    acc = accentuate(subject, objective, x, strength=args.strength, steps=args.steps, lr=args.lr, seed=args.seed,
                     progress=not args.quiet)
    import numpy as np

    pic = lambda a: upscale_nearest(input_rgb(a, subject.value_range), max(1, 96 // max(a.shape[1:])))  # noqa: E731
    for i, id_ in enumerate(ids):
        tiles = np.stack([pic(acc.originals[i]), pic(acc.images[i])])
        save_png(tile_grid(tiles, ncols=2, pad=2), out / f"accentuated-{Path(id_).with_suffix('').as_posix().replace('/', '_')}.png")
        flip = (f"decision became {targets[0].address.split(':', 1)[1]} at step {acc.flip_step[i]} "
                f"(RMS change {acc.flip_rms[i]:.3g}, largest {acc.flip_max[i]:.3g})") if acc.flip_step[i] >= 0 else ""
        print(f"{id_}: {targets[0].address} {acc.rendering.start_values[i]:.3g} -> {acc.rendering.values[i]:.3g}  {flip}")
    print(f"Pictures written to {out}/ (original | accentuated)")
    return 0


def _explain_inputs(args, subject, data):
    """Raw inputs and ids from INPUT files/ids, or the first --limit examples of --data."""
    import torch

    from .data import Batch, read_image

    files = [i for i in args.inputs if Path(i).is_file()]
    if files and len(files) != len(args.inputs):
        raise NeuronscopeError("Give INPUT as image files or as example ids in --data, not a mix.")
    if files:
        try:
            x = torch.stack([read_image(f, subject.input_shape, subject.value_range) for f in files])
        except OSError as e:
            raise NeuronscopeError(f"Could not read an INPUT image: {e}") from None
        return Batch([Path(f).name for f in files], x)
    if data is None:
        raise NeuronscopeError("explain needs INPUT image files, or --data (with example ids as INPUT, or none for "
                               "the first --limit examples).")
    if args.inputs:
        return data.get(args.inputs)
    if args.limit < 1:
        raise NeuronscopeError(f"--limit must be at least 1 (the number of examples to explain), got {args.limit}.")
    first = next(data.batches(args.limit), None)
    if first is None:
        raise NeuronscopeError(f"{args.data} has no readable example to explain.")
    return first


def _explain(args) -> int:
    import csv
    import io

    from .analyses.attribution import explain
    from .atomic import atomic_write
    from .imaging import png_bytes, tile_grid

    subject, data = _subject_and_optional_data(args, args.target_column)
    batch = _explain_inputs(args, subject, data)
    target = _output(args.explain_target) if args.explain_target != "predicted" else "predicted"
    options = dict(target=target, method=args.method.split(",") if args.method else None, data=data,
                   baseline=args.baseline, layer=args.layer, n_steps=args.steps, samples=args.samples,
                   window=args.window, batch_size=args.batch_size, curves=not args.no_checks,
                   randomisation=not args.no_checks, allow_guided=args.allow_guided, seed=args.seed)
    if args.engine == "local":
        e = explain(subject, batch, progress=not args.quiet, **options)
    else:  # chunks of --per-task inputs, one Ray task each, joined
        e = _engine(args).explain(subject, batch, per_task=args.per_task, **options)
    out = Path(args.out)

    def write_csv(name, rows):
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        atomic_write(out / name, buf.getvalue().encode())

    tables = e.tables()
    t = {k: v for k, v in tables["explanations"].items() if k not in ("map", "map_shape")}
    write_csv("explanations.csv", [list(t)] + [list(r) for r in zip(*t.values())])
    if "randomisation" in tables:
        r = tables["randomisation"]
        write_csv("randomisation.csv", [list(r)] + [list(v) for v in zip(*r.values())])
    if e.is_image:
        images = e.images()
        for i, id_ in enumerate(e.ids):
            tiles = [images[f"inputs/{i}"]] + [images[f"maps/{i}-{m}"] for m in e.results]
            name = Path(id_).with_suffix("").as_posix().replace("/", "_")
            atomic_write(out / f"{name}.png", png_bytes(tile_grid(np.stack(tiles), ncols=len(tiles), pad=2)))
    else:
        cols = subject.columns or [f"x{j}" for j in range(subject.input_shape[0])]
        rows = [["id", "method", "score", "baseline_score", *cols]]
        for m, r in e.results.items():
            for i, id_ in enumerate(e.ids):
                rows.append([id_, m, e.scores[i], e.baseline_scores[i], *r.pixel_maps()[i].tolist()])
        write_csv("attributions.csv", rows)
        from .website.svg import waterfall

        for m, r in e.results.items():  # waterfalls from the baseline's output to each input's
            if not r.signed:
                continue
            for i, id_ in enumerate(e.ids):
                chart = waterfall(cols, r.pixel_maps()[i].tolist(), float(e.baseline_scores[i]), float(e.scores[i]),
                                  gap_label="completeness gap" if r.method.complete else "not in the bars")
                name = Path(str(id_)).as_posix().replace("/", "_")
                atomic_write(out / f"{name}-{m}.svg",
                             f'<?xml version="1.0" encoding="utf-8"?>\n{chart}'.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1).encode())
    _print_explanation(e)
    print(f"{'Pictures' if e.is_image else 'Waterfall charts (SVG)'} and CSV files written to {out}/")
    return 0


def _print_explanation(e) -> None:
    print(f"{len(e)} input(s), target {e.target.labels[0] if len(set(e.target.labels)) == 1 else 'per input'}, "
          f"baseline {e.baseline}")
    print(f"{'method':<22} {'complete err':>12} {'deletion vs random':>19} {'insertion vs random':>20} "
          f"{'randomised corr':>16}")
    for m, r in e.results.items():
        comp = f"{np.max(r.completeness_rel):.1%}" if r.completeness_rel is not None else "-"
        if r.curves is not None:
            dl = f"{np.mean(r.curves.deletion_auc):.3g} / {np.mean(r.curves.random_deletion_auc):.3g}"
            ins = f"{np.mean(r.curves.insertion_auc):.3g} / {np.mean(r.curves.random_insertion_auc):.3g}"
        else:
            dl = ins = "-"
        rc = r.randomisation
        rand = "-" if rc is None else f"{rc.final:.2f}" + ("  FLAGGED" if rc.flagged else "")
        print(f"{m:<22} {comp:>12} {dl:>19} {ins:>20} {rand:>16}")
    for w in e.warnings + e.findings():
        print("note: " + w)


def _run(args) -> int:
    if args.command == "layers":
        from .analyses.overview import overview

        print(overview(_subject_from_args(args)).text())
        return 0
    if args.command == "filters":
        from .pipeline import ReportOptions, report

        index = report(_subject_from_args(args), None, args.out, ReportOptions(progress=not args.quiet))
        print(f"Filters written: {index}")
        return 0
    if args.command in ("report", "examples", "tabular", "directions"):
        return _report(args)
    if args.command == "visualize":
        return _visualize(args)
    if args.command == "explain":
        return _explain(args)
    if args.command == "demo":
        from .demo.run import run_demo

        index = run_demo(Path(args.out), force=args.force, progress=not args.quiet)
        print(f"\nDemo report written: {index.resolve()}\nOpen it in a browser, or run: neuronscope serve {args.out}")
        return 0
    if args.command == "serve":
        from .website.serve import serve

        serve(Path(args.dir), port=args.port)
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "explain":  # INPUTs may come after options (argparse gives nargs="*" none there)
        args.inputs += [a for a in extra if not a.startswith("-")]
        extra = [a for a in extra if a.startswith("-")]
    if extra:
        parser.error("unrecognized arguments: " + " ".join(extra))
    if args.command is None:
        parser.print_help()
        return 2
    if args.quiet:
        os.environ["NEURONSCOPE_QUIET"] = "1"
    try:
        return _run(args)
    except NeuronscopeError as e:
        msg = "\n".join(textwrap.fill(par, 100) for par in str(e).split("\n"))
        print(f"neuronscope {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished sections are kept; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
