"""The attribution methods, each a thin wrapper over Captum, in one registry.

Captum computes the attributions; this module picks each method's arguments well (baseline,
batching, noise level, window) and returns maps in the input's shape plus the numbers a method
can vouch for itself with (the completeness error of integrated gradients).

- saliency: the gradient (Simonyan et al. 2014), signed or absolute;
- input x gradient (Shrikumar et al. 2016);
- integrated gradients (Sundararajan et al. 2017), with its completeness error;
- SmoothGrad, SmoothGrad-squared and VarGrad (Smilkov et al. 2017; Adebayo et al. 2018);
- Grad-CAM on a chosen layer (Selvaraju et al. 2017), upsampled to the input;
- occlusion (Zeiler & Fergus 2014) and feature ablation;
- gradient SHAP (Lundberg & Lee 2017);
- guided backprop and guided Grad-CAM (Springenberg et al. 2015) only when asked for: they
  fail the model-randomisation sanity check (Adebayo et al. 2018).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import OptionError, UnsupportedError, did_you_mean
from ...subject import Subject
from .sampling import sampled_gradients
from .targets import Target


def input_ids(n: int) -> list[str]:
    """The ids of tensor inputs given without names. The sampled methods key their draws to ids,
    so every path (one call, Ray tasks) must name an input at a position alike."""
    return [f"input-{i}" for i in range(n)]


@dataclass
class Context:
    """Everything a method needs for one batch of raw inputs."""

    subject: Subject
    target: Target
    x: torch.Tensor  # raw inputs (N, *input_shape)
    baseline: torch.Tensor  # same shape
    layer: str | None = None  # Grad-CAM's layer
    n_steps: int = 50
    samples: int = 50  # SmoothGrad / VarGrad / gradient SHAP samples
    noise: float = 0.15  # noise std as a fraction of the input value range
    window: int | None = None  # occlusion / ablation patch side, pixels (images)
    stride: int | None = None
    seed: int = 0
    keys: list[str] | None = None  # example ids: the sampled methods key their random draws to them
    # (kind, evaluations per input) -> a batching.BatchChoice (or None: Captum's default); set by explain()
    batch: Callable[[str, int], object | None] = lambda kind, evaluations: None
    choices: dict = field(default_factory=dict)  # what batch() chose, per method, for the record


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    signed: bool  # maps carry a sign (diverging colours) or are magnitudes
    run: Callable[[Context], tuple[torch.Tensor, dict]]
    baseline: bool = False  # uses the baseline
    layer: bool = False  # reads a layer (Grad-CAM): the map is one channel at the input's size
    complete: bool = False  # attributions should sum to f(x) - f(baseline)
    guided: bool = False  # fails the randomisation check: only behind allow_guided


def _index(ctx: Context) -> list[int]:
    return list(ctx.target.index[: len(ctx.x)])


def _stdev(ctx: Context) -> float:
    lo, hi = ctx.subject.value_range
    return ctx.noise * (hi - lo)


def _saliency(absolute: bool):
    def run(ctx: Context):
        from captum.attr import Saliency
        return Saliency(ctx.target.forward).attribute(ctx.x, target=_index(ctx), abs=absolute), {}
    return run


def _input_x_gradient(ctx: Context):
    from captum.attr import InputXGradient
    return InputXGradient(ctx.target.forward).attribute(ctx.x, target=_index(ctx)), {}


def _integrated_gradients(ctx: Context):
    from captum.attr import IntegratedGradients
    choice = ctx.batch("integrated_gradients", ctx.n_steps)
    size = choice.size if choice is not None else None
    attr, delta = IntegratedGradients(ctx.target.forward).attribute(
        ctx.x, baselines=ctx.baseline, target=_index(ctx), n_steps=ctx.n_steps, internal_batch_size=size,
        return_convergence_delta=True)
    return attr, {"delta": delta.detach()}


def _sampled(ctx: Context, kind: str, stdev: float, baseline=None, powers: tuple[int, ...] = (1,)):
    choice = ctx.batch(kind, ctx.samples)
    rows = choice.rows if choice is not None else len(ctx.x) * ctx.samples
    keys = list(ctx.keys) if ctx.keys is not None else input_ids(len(ctx.x))
    return sampled_gradients(ctx.target.forward, ctx.x, _index(ctx), keys, samples=ctx.samples, stdev=stdev,
                             seed=ctx.seed, rows_per_pass=rows, baseline=baseline, powers=powers)


def _noise_tunnel(nt_type: str):
    """SmoothGrad (mean gradient), SmoothGrad-squared (mean square) or VarGrad (variance) over
    noisy copies, as Captum's NoiseTunnel defines them, with draws keyed per example (:mod:`.sampling`)."""
    def run(ctx: Context):
        if nt_type == "vargrad":
            mean, mean_sq = _sampled(ctx, nt_type, _stdev(ctx), powers=(1, 2))
            attr = (mean_sq - mean ** 2).clamp_min(0)
        else:
            (attr,) = _sampled(ctx, nt_type, _stdev(ctx), powers=(2,) if nt_type == "smoothgrad_sq" else (1,))
        return attr.to(ctx.x.dtype), {}
    return run


def _gradient_shap(ctx: Context):
    """Gradient SHAP around each input's own baseline (Captum would draw any input's baseline from
    the batch's), with half SmoothGrad's noise and draws keyed per example (:mod:`.sampling`)."""
    (attr,) = _sampled(ctx, "gradient_shap", _stdev(ctx) / 2, baseline=ctx.baseline)
    return attr.to(ctx.x.dtype), {}


def default_window(shape: tuple[int, ...]) -> int:
    """An occlusion patch of about 1/8 of the smaller image side."""
    return max(1, round(min(shape[-2:]) / 8))


def _window(ctx: Context) -> tuple[int, int]:
    w = ctx.window or default_window(ctx.x.shape)
    return w, ctx.stride or max(1, w // 2)


def _occlusion(ctx: Context):
    from captum.attr import Occlusion
    if ctx.x.dim() == 2:
        shape, strides, n = (1,), (1,), ctx.x.shape[1]
    else:
        w, s = _window(ctx)
        c, h, wd = ctx.x.shape[1:]
        shape, strides = (c, w, w), (c, s, s)
        n = ((h - w) // s + 1) * ((wd - w) // s + 1)
    choice = ctx.batch("occlusion", n)
    attr = Occlusion(ctx.target.forward).attribute(ctx.x, sliding_window_shapes=shape, strides=strides,
                                                  baselines=ctx.baseline, target=_index(ctx),
                                                  perturbations_per_eval=choice.size if choice else 1)
    return attr, {}


def patch_mask(shape: tuple[int, ...], side: int) -> torch.Tensor:
    """Feature ids for ablation: a grid of side x side patches shared by all channels (1, 1, H, W),
    or one id per column for vectors (1, F)."""
    if len(shape) == 1:
        return torch.arange(shape[0]).unsqueeze(0)
    h, w = shape[-2:]
    rows = torch.arange(h) // side
    cols = torch.arange(w) // side
    return (rows[:, None] * ((w + side - 1) // side) + cols[None, :]).view(1, 1, h, w)


def _feature_ablation(ctx: Context):
    from captum.attr import FeatureAblation
    mask = patch_mask(tuple(ctx.x.shape[1:]), ctx.window or default_window(ctx.x.shape)
                      if ctx.x.dim() > 2 else 1).to(ctx.x.device)
    choice = ctx.batch("feature_ablation", int(mask.max()) + 1)
    attr = FeatureAblation(ctx.target.forward).attribute(ctx.x, baselines=ctx.baseline, target=_index(ctx),
                                                         feature_mask=mask,
                                                         perturbations_per_eval=choice.size if choice else 1)
    return attr, {}


def default_cam_layer(subject: Subject, before: str | None = None) -> str:
    """The last non-pooling layer with a spatial map bigger than 1x1 (the usual Grad-CAM choice), before
    ``before`` when the target is a unit of that layer."""
    layers = subject.layers
    stop = next((i for i, info in enumerate(layers) if info.name == before), len(layers)) if before else len(layers)
    candidates = [info for info in layers[:stop] if info.output_shape and len(info.output_shape) == 3
                  and info.output_shape[1] * info.output_shape[2] > 1 and info.call is None]
    # Grad-CAM reads the last convolutional features: skip pooling (coarser, same channels) unless
    # nothing else is left.
    features = [i for i in candidates if "pool" not in i.type.lower()]
    candidates = [i.name for i in (features or candidates)]
    if not candidates:
        raise UnsupportedError("Grad-CAM needs a layer with a spatial map; this model has none "
                               + (f"before {before}." if before else "(is it an image model?)."))
    return candidates[-1]


def cam_module(subject: Subject, layer: str) -> nn.Module:
    if subject.fixed_batch:
        raise UnsupportedError(f"This model was exported at a fixed batch of {subject.fixed_batch}: inputs go through "
                               "in padded chunks, and Grad-CAM's layer hook would see only the last one. Use "
                               "integrated_gradients, smoothgrad or occlusion, or export the model with a dynamic batch.")
    info = subject.layer(layer)
    if info.output_shape is None or len(info.output_shape) != 3:
        raise OptionError(f"Grad-CAM needs a layer with a (channels, height, width) output; {layer!r} gives "
                          f"{info.output_shape}. Try {default_cam_layer(subject)!r}.")
    if info.call is not None:
        raise UnsupportedError(f"{layer!r} is one call of a module used several times; Grad-CAM hooks the module, "
                               "so pick a layer called once.")
    return subject.module(info.module_name)


def _upsample(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    from captum.attr import LayerAttribution
    return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]


def _gradcam(ctx: Context):
    from captum.attr import LayerGradCam
    layer = ctx.layer or default_cam_layer(ctx.subject, ctx.target.layer)
    cam = LayerGradCam(ctx.target.forward, cam_module(ctx.subject, layer)).attribute(
        ctx.x, target=_index(ctx), relu_attributions=True)
    return _upsample(cam, ctx.x), {"layer": layer}


class _AsModule(nn.Module):
    """The target's forward function as a module that holds the model, for Captum's guided
    methods, which replace the gradients of the model's ``nn.ReLU`` modules."""

    def __init__(self, forward, model: nn.Module):
        super().__init__()
        self.model = model
        self._fn = forward

    def forward(self, x):
        return self._fn(x)


def _guided_backprop(ctx: Context):
    from captum.attr import GuidedBackprop
    wrapped = _AsModule(ctx.target.forward, ctx.subject.model)
    return GuidedBackprop(wrapped).attribute(ctx.x, target=_index(ctx)), {}


def _guided_gradcam(ctx: Context):
    from captum.attr import GuidedGradCam
    layer = ctx.layer or default_cam_layer(ctx.subject, ctx.target.layer)
    wrapped = _AsModule(ctx.target.forward, ctx.subject.model)
    attr = GuidedGradCam(wrapped, cam_module(ctx.subject, layer)).attribute(ctx.x, target=_index(ctx))
    return attr, {"layer": layer}


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("saliency", "Saliency (gradient)", True, _saliency(False)),
    Method("saliency_abs", "Saliency |gradient|", False, _saliency(True)),
    Method("input_x_gradient", "Input x gradient", True, _input_x_gradient),
    Method("integrated_gradients", "Integrated gradients", True, _integrated_gradients, baseline=True, complete=True),
    Method("smoothgrad", "SmoothGrad", True, _noise_tunnel("smoothgrad")),
    Method("smoothgrad_sq", "SmoothGrad-squared", False, _noise_tunnel("smoothgrad_sq")),
    Method("vargrad", "VarGrad", False, _noise_tunnel("vargrad")),
    Method("gradcam", "Grad-CAM", False, _gradcam, layer=True),
    Method("occlusion", "Occlusion", True, _occlusion, baseline=True),
    Method("feature_ablation", "Feature ablation", True, _feature_ablation, baseline=True),
    Method("gradient_shap", "Gradient SHAP", True, _gradient_shap, baseline=True),
    Method("guided_backprop", "Guided backprop", True, _guided_backprop, guided=True),
    Method("guided_gradcam", "Guided Grad-CAM", True, _guided_gradcam, layer=True, guided=True),
]}

#: What a user gets without choosing, per input kind.
DEFAULT_IMAGE = ("integrated_gradients", "smoothgrad", "gradcam", "occlusion")
DEFAULT_VECTOR = ("integrated_gradients", "feature_ablation", "gradient_shap")

GUIDED_WARNING = ("{name} is shown only because it was asked for: guided methods fail the model-randomisation "
                  "sanity check (Adebayo et al. 2018): their maps barely change when the model's weights are "
                  "replaced by random ones, so they show edges of the input more than what the model uses.")


def get_method(name: str, *, allow_guided: bool = False, image: bool = True) -> Method:
    """A method by name, with the valid names in the error; guided ones only when allowed."""
    if name not in METHODS:
        raise OptionError(f"Unknown attribution method {name!r}. " + did_you_mean(name, list(METHODS), "method"))
    m = METHODS[name]
    if m.guided and not allow_guided:
        raise OptionError(f"{name} fails the model-randomisation sanity check (Adebayo et al. 2018); ask for it "
                          "explicitly with allow_guided=True (--allow-guided) if you want it anyway.")
    if m.guided:
        warnings.warn(GUIDED_WARNING.format(name=m.title), stacklevel=3)
    if m.layer and not image:
        raise OptionError(f"{name} reads a spatial layer; it is for image models. For vector inputs use "
                          + ", ".join(DEFAULT_VECTOR) + ".")
    return m
