"""The thin layer between ``lcm_core`` and ComfyUI's model objects, shared by the nodes.

Patching decision: an adapter (any format ``lcm_core`` reads, LyCORIS LoHa / LoKr / full diff,
DoRA, OFT and BOFT included) is converted to a kohya state dict (LyCORIS tensors under their own
``.hada_*`` / ``.lokr_*`` / ``.diff`` / ``.oft_blocks`` / ``.dora_scale`` suffixes) and handed to
ComfyUI's own ``comfy.lora.load_lora`` (so ``comfy.weight_adapter`` applies every type) with the key maps
``comfy.lora.model_lora_keys_unet`` / ``model_lora_keys_clip`` — the exact path
``LoraLoader`` (``comfy.sd.load_lora_for_models``) takes. The patches are registered
with ``ModelPatcher.add_patches`` on clones, so they stack with every other LoRA loader,
and ComfyUI applies them at load time under its memory management (lowvram, offload);
no weights are copied here. A module that ComfyUI's maps do not know is an error
(naming the adapter and the first unknown modules), never a silently dropped key.

"Patch sampling to LCM" installs ComfyUI's own LCM model sampling — the class
``ModelSamplingDiscrete(sampling="lcm")`` builds (``ModelSamplingDiscreteDistilled`` +
``LCM`` from ``comfy_extras.nodes_model_advanced``) — so a model from our loader samples
exactly like ``LoraLoader → ModelSamplingDiscrete(lcm)``. Its boundary condition applies
c_skip to the unscaled input where diffusers uses the VP-scaled one; the gap is the
closed form ``lcm_core.boundary.comfyui_minus_diffusers`` (< 1e-7·|x| at every LCM
timestep ≥ 19).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
from collections import OrderedDict

import comfy.lora
import folder_paths

from ..lcm_core.errors import AdapterFileError, ArchitectureMismatchError, ConfigError
from ..lcm_core.lora import LoraAdapter
from ..lcm_core.schedule import DiscreteSchedule


CATEGORY = "LCM-LoRA"
ADAPTER_TYPE = "LCM_ADAPTER"

# ComfyUI model config class name -> lcm_core architecture name.
_MODEL_CLASS_ARCH = {
    "SD15": "sd1",
    "SD15_instructpix2pix": "sd1",
    "SD20": "sd2",
    "SD21UnclipL": "sd2",
    "SD21UnclipH": "sd2",
    "SDXL": "sdxl",
    "SDXL_instructpix2pix": "sdxl",
    "SSD1B": "ssd1b",
}
ARCH_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "ssd1b": "SSD-1B"}


# -- files ---------------------------------------------------------------------------------
def lora_names() -> list[str]:
    """Every file in ComfyUI's ``loras`` folders (the list LoraLoader shows)."""
    return folder_paths.get_filename_list("loras")


def check_lora_name(name, allow_none: bool = False):
    """``validate_inputs`` helper: True, or the reason ComfyUI shows before running the prompt."""
    if allow_none and name in (None, "None"):
        return True
    if name not in lora_names():
        return f"{name!r} is not in ComfyUI's loras folder(s)"
    return True


def lora_path(name: str) -> str:
    """Full path of a ``loras`` entry; a peft ``adapter_model.*`` resolves to its folder."""
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise AdapterFileError(name, "not found in ComfyUI's loras folder(s) " + ", ".join(folder_paths.get_folder_paths("loras")))
    folder = os.path.dirname(path)
    if os.path.basename(path).startswith("adapter_model.") and os.path.isfile(os.path.join(folder, "adapter_config.json")):
        return folder
    return path


# One SDXL LCM-LoRA (latent-consistency/lcm-lora-sdxl: 788 modules, rank 64, fp16) holds
# 393.5 MB of tensors; the default bound keeps one of them, as LoraLoader keeps one file.
DEFAULT_CACHE_BYTES = 400_000_000
CACHE_ENV = "LCM_LORA_ADAPTER_CACHE_MB"


def cache_bytes_from_env(default: int = DEFAULT_CACHE_BYTES) -> int:
    """The adapter cache bound: ``LCM_LORA_ADAPTER_CACHE_MB`` (megabytes, 0 = no cache) or the default.
    A bad value is logged and the default used (the pack must still load)."""
    raw = os.environ.get(CACHE_ENV)
    if raw is None or not raw.strip():
        return default
    try:
        mb = float(raw)
        if not mb >= 0:
            raise ValueError
    except ValueError:
        logging.warning("[LCM-LoRA] %s=%r is not a number of megabytes >= 0; using the default %d MB",
                        CACHE_ENV, raw, default // 1_000_000)
        return default
    if not math.isfinite(mb) or mb * 1_000_000 > sys.maxsize:  # "inf" (or 1e400): no bound
        return sys.maxsize
    return int(mb * 1_000_000)


def adapter_nbytes(adapter: LoraAdapter) -> int:
    """Bytes held by an adapter's tensors (whatever tensors its modules carry)."""
    import torch

    total = 0
    for module in adapter.modules.values():
        # LyCORIS-aware modules list their tensors; otherwise every tensor field counts
        fields = module.tensors() if callable(getattr(module, "tensors", None)) else (getattr(module, "__dict__", None) or {})
        total += sum(v.numel() * v.element_size() for v in fields.values() if isinstance(v, torch.Tensor))
    return total


class _AdapterCache:
    """Recently read adapters, keyed by path + size + mtime, bounded in bytes (least recently used
    out first). The adapter just read is always kept, even when it alone exceeds the bound (as
    LoraLoader keeps its last file: re-running a graph must not re-read it); ``max_bytes=0``
    keeps nothing."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict = OrderedDict()  # key -> (adapter, nbytes)
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(path: str):
        paths = [path]
        if os.path.isdir(path):
            paths = sorted(os.path.join(path, f) for f in os.listdir(path))
        out = []
        for p in paths:
            st = os.stat(p)
            out.append((p, st.st_size, st.st_mtime_ns))
        return tuple(out)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(n for _, n in self._items.values())

    def paths(self) -> list[str]:
        """Cached adapter paths, least recently used first."""
        with self._lock:
            return [key[0] for key in self._items]

    def get(self, path: str) -> LoraAdapter:
        from ..lcm_core.lora import read_adapter

        key = (os.path.realpath(path), self._stamp(path))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        # lcm_core checks the structure (header, byte ranges, pairs, ranks, shapes, architecture)
        # and every value (NaN/Inf: validate.has_nonfinite, exact, one pass over the data).
        # require_fit: a file whose modules fit no single supported architecture is an error naming them
        adapter = read_adapter(path, require_fit=True)
        if self.max_bytes <= 0:
            return adapter
        with self._lock:
            for old in [k for k in self._items if k[0] == key[0]]:  # an older version of the same file
                del self._items[old]
            self._items[key] = (adapter, adapter_nbytes(adapter))
            total = sum(n for _, n in self._items.values())
            while total > self.max_bytes and len(self._items) > 1:
                _, (_, n) = self._items.popitem(last=False)
                total -= n
        return adapter

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


ADAPTERS = _AdapterCache(cache_bytes_from_env())


def load_adapter(name: str) -> LoraAdapter:
    """Read a ``loras`` entry with ``lcm_core`` (kohya / diffusers / peft / comfy), cached."""
    return ADAPTERS.get(lora_path(name))


# -- architectures -----------------------------------------------------------------------
def model_architecture(model) -> str:
    """lcm_core architecture of a ComfyUI MODEL (from the model config ComfyUI detected)."""
    cls = type(model.model.model_config).__name__
    arch = _MODEL_CLASS_ARCH.get(cls)
    if arch is None:
        raise ConfigError(
            f"model ({cls})",
            "LCM-LoRA supports SD 1.x, SD 2.x, SDXL and SSD-1B checkpoints; ComfyUI detected this model as " + cls,
        )
    return arch


def _mismatch(name: str, found: str, model_arch: str) -> ArchitectureMismatchError:
    return ArchitectureMismatchError(
        name, expected=model_arch, found=found,
        detail=f"adapter {name} is {ARCH_NAMES.get(found, found)} ({found}), "
               f"the model is {ARCH_NAMES.get(model_arch, model_arch)} ({model_arch})",
    )


def check_adapter_architecture(name: str, adapter: LoraAdapter, model_arch: str) -> None:
    """Clear node error when the adapter was made for another base model.

    SSD-1B's modules are a subset of SDXL's, so an adapter that only looks like SDXL may still
    fit an SSD-1B model: that case is decided by the module check in :func:`adapter_patches`.
    """
    found = adapter.architecture
    if found in (None, "unknown") or found == model_arch or (found, model_arch) == ("sdxl", "ssd1b"):
        return
    raise _mismatch(name, found, model_arch)


# -- patches --------------------------------------------------------------------------------
def _component_filter(state_dict: dict, keep_unet: bool, keep_text: bool) -> dict:
    def keep(key: str) -> bool:
        return keep_unet if key.startswith("lora_unet_") else keep_text

    return {k: v for k, v in state_dict.items() if keep(k)}


_KEY_MAPS: OrderedDict = OrderedDict()
_KEY_MAPS_LOCK = threading.Lock()
_PATCH_CACHE_ATTR = "_lcm_comfy_patch_cache"


def _model_signature(model) -> tuple | None:
    """What ComfyUI's UNet LoRA key map depends on: the model class and its UNet config."""
    if model is None:
        return None
    cfg = model.model.model_config
    return (type(model.model).__name__, type(cfg).__name__, repr(sorted(cfg.unet_config.items(), key=lambda kv: kv[0])))


def _clip_signature(clip) -> tuple | None:
    if clip is None:
        return None
    return (type(clip.cond_stage_model).__name__,)


def _key_map(model, clip) -> tuple[dict, dict]:
    """``model_lora_keys_unet`` + ``model_lora_keys_clip`` (ComfyUI's LoraLoader maps) and the
    shapes of the weights they point at, cached per model structure."""
    sig = (_model_signature(model), _clip_signature(clip))
    with _KEY_MAPS_LOCK:
        if sig in _KEY_MAPS:
            _KEY_MAPS.move_to_end(sig)
            return _KEY_MAPS[sig]
    key_map: dict = {}
    shapes: dict = {}
    if model is not None:
        key_map = comfy.lora.model_lora_keys_unet(model.model, key_map)
        shapes.update((k, tuple(v.shape)) for k, v in model.model.state_dict().items())
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
        shapes.update((k, tuple(v.shape)) for k, v in clip.cond_stage_model.state_dict().items())
    with _KEY_MAPS_LOCK:
        _KEY_MAPS[sig] = (key_map, shapes)
        while len(_KEY_MAPS) > 8:
            _KEY_MAPS.popitem(last=False)
    return key_map, shapes


def _fits(update_shape: tuple, weight_shape: tuple) -> bool:
    """A LoRA update fits a weight of the same shape; Linear (o, i) and 1×1 conv (o, i, 1, 1) are interchangeable.
    OFT knows only its output size (``(o, -1)``); LyCORIS factors of a k×k conv may be flattened ``(o, i·k·k)``."""
    def squeeze(s):
        return s[:2] if len(s) == 4 and s[2:] == (1, 1) else s

    update_shape, weight_shape = tuple(update_shape), tuple(weight_shape)
    if -1 in update_shape:
        return update_shape[0] == weight_shape[0]
    if len(update_shape) == 2 and len(weight_shape) == 4:
        return update_shape == (weight_shape[0], weight_shape[1] * weight_shape[2] * weight_shape[3])
    return squeeze(update_shape) == squeeze(weight_shape)


def adapter_patches(name: str, adapter: LoraAdapter, arch: str, model=None, clip=None) -> dict:
    """ComfyUI patch dict for ``adapter`` on ``model`` / ``clip`` (either may be None).

    Only the components that will be patched are converted, so nothing is "not loaded". The
    result is remembered on the adapter object (per model structure): patches are immutable
    views of the adapter's tensors, so re-applying a cached adapter costs only ``add_patches``.
    """
    from ..lcm_core.lora import adapter_to_state_dict

    cache = adapter.__dict__.setdefault(_PATCH_CACHE_ATTR, {})
    sig = (arch, _model_signature(model), _clip_signature(clip))
    if sig in cache:
        return cache[sig]
    try:
        state_dict = adapter_to_state_dict(_comfy_applicable(adapter), "kohya", arch)
    except ValueError as e:
        raise AdapterFileError(name, f"cannot be applied to a {ARCH_NAMES.get(arch, arch)} model: {e}") from None
    state_dict = _component_filter(state_dict, model is not None, clip is not None)
    key_map, weight_shapes = _key_map(model, clip)
    modules = sorted({k.split(".", 1)[0] for k in state_dict})
    unknown = [m for m in modules if m not in key_map]
    if unknown:
        if adapter.architecture not in (None, "unknown", arch):
            raise _mismatch(name, adapter.architecture, arch)
        raise AdapterFileError(
            name,
            f"{len(unknown)} of {len(modules)} LoRA modules have no counterpart in this "
            f"{ARCH_NAMES.get(arch, arch)} model (e.g. {', '.join(unknown[:3])})",
        )
    _check_shapes(name, adapter, arch, key_map, weight_shapes)
    # Only this adapter's modules: same patches as with the full map, without load_lora trying
    # every weight-adapter type on the thousands of other model keys.
    to_load = {m: key_map[m] for m in modules}
    patches = comfy.lora.load_lora(state_dict, to_load, log_missing=True)
    cache[sig] = patches
    return patches


def _comfy_applicable(adapter: LoraAdapter) -> LoraAdapter:
    """The same adapter in a form ComfyUI's ``comfy.weight_adapter`` applies without error.

    ComfyUI 0.3.64 (torch ≥ 2.14) cannot apply a Tucker LoKr (``lokr_t2``) on a k×k conv: its
    ``torch.kron`` of the non-contiguous einsum result fails ("view size is not compatible"), is
    logged, and the weight is left unpatched. Such modules are handed over with the Tucker product
    already formed into a whole ``lokr_w2`` and the scale folded in (w2 whole ⇒ ComfyUI's scale 1):
    the same ΔW, exactly, through ComfyUI's own LoKr code.
    """
    from dataclasses import replace

    import torch

    from ..lcm_core.lora.lycoris_modules import LokrModule

    fixed = {}
    for key, m in adapter.modules.items():
        if isinstance(m, LokrModule) and m.t2 is not None:
            w2 = (m.w2_matrix(torch.float32).reshape(m.w2_full_shape()) * m.scale).contiguous()
            w1 = m.w1_matrix(torch.float32) if m.w1 is None else m.w1
            fixed[key] = replace(m, w1=w1, w1a=None, w1b=None, w2=w2, w2a=None, w2b=None, t2=None, alpha=None)
    if not fixed:
        return adapter
    return LoraAdapter(modules={**adapter.modules, **fixed}, metadata=adapter.metadata,
                       source_format=adapter.source_format, architecture=adapter.architecture)


def _check_shapes(name: str, adapter: LoraAdapter, arch: str, key_map: dict, weight_shapes: dict) -> None:
    """Every update must have the shape of the weight it patches (ComfyUI would only log and skip it)."""
    from ..lcm_core.lora import canonical_to_kohya

    bad = []
    for key, module in adapter.modules.items():
        target = key_map.get(canonical_to_kohya(key, arch))
        if target is None:
            continue  # a component that is not being patched
        target = target if isinstance(target, str) else target[0]
        shape = weight_shapes.get(target)
        if shape is not None and not _fits(module.weight_shape, shape):
            bad.append(f"{key}: update {tuple(module.weight_shape)} vs weight {shape}")
    if bad:
        raise AdapterFileError(name, f"{len(bad)} LoRA modules do not fit the model's weights (e.g. {bad[0]})")


def apply_patches(patches: dict, model, clip, strength_model: float, strength_clip: float):
    """Clone and ``add_patches`` (as ``comfy.sd.load_lora_for_models``); None / zero strength = untouched."""
    new_model, new_clip = model, clip
    if model is not None and strength_model != 0:
        new_model = model.clone()
        new_model.add_patches(patches, strength_model)
    if clip is not None and strength_clip != 0:
        new_clip = clip.clone()
        new_clip.add_patches(patches, strength_clip)
    return new_model, new_clip


@functools.lru_cache(maxsize=2)
def _lcm_model_sampling_class(v_prediction: bool = False):
    import comfy.model_sampling
    from comfy_extras.nodes_model_advanced import LCM, ModelSamplingDiscreteDistilled

    if not v_prediction:
        class ModelSamplingLCM(ModelSamplingDiscreteDistilled, LCM):
            """What ``ModelSamplingDiscrete(sampling="lcm")`` builds: 50-step distilled grid + LCM boundary."""

        return ModelSamplingLCM

    class LCMVPrediction(comfy.model_sampling.V_PREDICTION):
        """LCM's boundary condition (c_skip, c_out at timestep × 10, σ_data 0.5, as ComfyUI's ``LCM``) on a
        v-prediction model's x̂0, as diffusers' ``LCMScheduler(prediction_type="v_prediction")``: ComfyUI's
        ``LCM`` reads every model output as ε, which is wrong for a v model (SD 2.x 768, v-pred SDXL fine-tunes)."""

        def calculate_denoised(self, sigma, model_output, model_input):
            x0 = super().calculate_denoised(sigma, model_output, model_input)
            timestep = self.timestep(sigma).view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
            scaled_timestep = timestep * 10.0
            c_skip = 0.25 / (scaled_timestep ** 2 + 0.25)
            c_out = scaled_timestep / (scaled_timestep ** 2 + 0.25) ** 0.5
            return c_out * x0 + c_skip * model_input

    class ModelSamplingLCMVPrediction(ModelSamplingDiscreteDistilled, LCMVPrediction):
        """The distilled 50-step grid + LCM boundary for a v-prediction model."""

    return ModelSamplingLCMVPrediction


def patch_lcm_sampling(model):
    """Clone of ``model`` with LCM model sampling: for an ε model exactly ComfyUI's ``ModelSamplingDiscrete``
    "lcm"; a v-prediction model keeps reading its output as v (ComfyUI's "lcm" assumes ε), and a zero-terminal-SNR
    model keeps its schedule (ComfyUI's node takes zsnr as an input; the loader takes it from the model)."""
    import comfy.model_sampling

    current = model.get_model_object("model_sampling")
    v_prediction = isinstance(current, comfy.model_sampling.V_PREDICTION) and not isinstance(current, comfy.model_sampling.EDM)
    zsnr = bool(getattr(current, "zsnr", False))
    patched = model.clone()
    patched.add_object_patch("model_sampling", _lcm_model_sampling_class(v_prediction)(model.model.model_config, zsnr=zsnr))
    return patched


def schedule_of(model_sampling) -> DiscreteSchedule:
    """The σ ↔ timestep table a ComfyUI model samples with: SD's (ComfyUI's float64 convention), rescaled to zero
    terminal SNR when the model's sampling is ``zsnr`` (ComfyUI's ModelSamplingDiscrete node; v-pred fine-tunes)."""
    return _comfyui_schedule(bool(getattr(model_sampling, "zsnr", False)))


@functools.lru_cache(maxsize=2)
def _comfyui_schedule(zero_terminal_snr: bool) -> DiscreteSchedule:  # built once: every sampling call asks for it
    return DiscreteSchedule(convention="comfyui", zero_terminal_snr=zero_terminal_snr)


def model_schedule(model) -> DiscreteSchedule:
    """:func:`schedule_of` a MODEL (``None``: SD's table, for a node whose model input is not connected)."""
    return schedule_of(None if model is None else model.get_model_object("model_sampling"))


def describe(adapter: LoraAdapter, fmt: str | None = None) -> str:
    """One line for the node's UI: architecture, modules, ranks, format."""
    ranks = sorted(adapter.ranks())
    rank = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}" if ranks else "-"
    fmt = fmt or adapter.source_format or "in-memory"
    algos = "" if adapter.is_plain_lora() else " (" + ", ".join(
        f"{a} {n}" for a, n in sorted(adapter.algorithms().items())) + ")"
    return (f"{ARCH_NAMES.get(adapter.architecture, adapter.architecture or 'unknown')}, "
            f"{len(adapter)} modules{algos}, rank {rank}, {fmt} format")
