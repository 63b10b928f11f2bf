"""Malformed adapter files for the robustness tests: hypothesis strategies plus hand-made cases.

Shared by ``tests/test_fuzz_adapters.py`` (library + CLI) and ``tests/comfy/test_comfy_fuzz.py``
(the nodes over HTTP). Two layers, as a hostile or broken download would present them:

* **container** — bytes that are not a valid safetensors file: truncated, wrong header length,
  invalid JSON / UTF-8, dtype or shape lies, offsets out of range / overlapping / gaps, sizes
  declared far beyond the file (memory bombs), duplicate JSON keys, bad entries or metadata,
  deep nesting, tiny files. They start from a valid LoRA written by ``safetensors.torch.save``
  (the reference writer, not ours) and follow the format description
  (https://github.com/huggingface/safetensors#format).
* **LoRA** — valid safetensors whose tensors are not a valid LoRA: NaN/Inf, zero rank, mismatched
  up/down, missing partner, wrong dims or dtypes, bad alpha or lora_mid, mixed key formats, keys
  of another architecture, unknown modules, non-LoRA tensors, damaged DoRA/LoHa/LoKr/OFT/diff tensors
  (LyCORIS: truncated factors, a missing ``w2``, mismatched Kronecker shapes, NaN in ``dora_scale``),
  duplicate modules, no tensors, bad diffusers/peft LoraConfig metadata (incl. catastrophic-backtracking patterns).

Each :class:`Case` says whether the reader **must** refuse it (``strict``: the defect is there
by construction) or may accept it (random byte flips, random module names, metadata noise);
for the latter, anything we accept must also be accepted by the safetensors library.
Module names and shapes are those of the diffusers SD1.5 / SDXL models (sd-scripts, diffusers,
peft and ComfyUI key conventions written out by hand here).
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st
from safetensors.torch import save as st_save

# --------------------------------------------------------------------------- reference modules

SD1 = {  # canonical (diffusers named_modules) key -> base weight shape in SD1.5
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (320, 768),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (320, 320),
    "unet.down_blocks.0.attentions.0.proj_in": (320, 320, 1, 1),  # SD1: Conv2d 1×1
    "unet.down_blocks.0.resnets.0.conv1": (320, 320, 3, 3),
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj": (768, 768),
}
SDXL = {  # modules only the SDXL family has (2048-wide cross-attention, depth-2 blocks, OpenCLIP-G)
    "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k": (640, 2048),
    "unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_v": (640, 640),
    "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj": (1280, 1280),
}
POOLS = {"sd1": SD1, "sdxl": SDXL}
# ComfyUI / original-SD (LDM) names of the SD1 modules (ComfyUI comfy/utils.py unet_to_diffusers).
COMFY_SD1 = {
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k":
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q":
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q",
    "unet.down_blocks.0.attentions.0.proj_in": "diffusion_model.input_blocks.1.1.proj_in",
    "unet.down_blocks.0.resnets.0.conv1": "diffusion_model.input_blocks.1.0.in_layers.2",
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj":
        "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj",
}
# Single-file checkpoint keys of the same SD1 weights (for `lcm-lora fuse`).
CHECKPOINT_SD1 = {
    **{k: "model." + v + ".weight" for k, v in COMFY_SD1.items() if k.startswith("unet.")},
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj":
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
}
FORMATS = {"sd1": ("kohya", "diffusers", "peft", "comfy", "kohya_ldm"), "sdxl": ("kohya", "diffusers")}


def kohya_name(key: str, arch: str) -> str:
    """sd-scripts ``LoRANetwork`` naming: prefix + module path with ``.`` → ``_``."""
    comp, path = key.split(".", 1)
    prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if arch == "sdxl" else "lora_te_",
              "text_encoder_2": "lora_te2_"}[comp]
    return prefix + path.replace(".", "_")


def module_name(key: str, arch: str, fmt: str) -> str:
    if fmt == "kohya":
        return kohya_name(key, arch)
    if fmt == "comfy":
        return COMFY_SD1[key]
    if fmt == "kohya_ldm":  # sd-scripts' LDM-named variant (as ComfyUI accepts): lora_unet_input_blocks_1_1_…
        comfy = COMFY_SD1[key]
        if comfy.startswith("diffusion_model."):
            return "lora_unet_" + comfy[len("diffusion_model."):].replace(".", "_")
        return kohya_name(key, arch)
    if fmt == "peft":
        return "base_model.model." + key.split(".", 1)[1]
    return key  # diffusers: unet.<path>, text_encoder.<path>


KOHYA_LIKE = ("kohya", "comfy", "kohya_ldm")  # .lora_down/.lora_up/.alpha suffixes


def role_suffixes(fmt: str) -> dict[str, str]:
    if fmt in KOHYA_LIKE:
        return {"down": ".lora_down.weight", "up": ".lora_up.weight", "alpha": ".alpha", "mid": ".lora_mid.weight"}
    return {"down": ".lora_A.weight", "up": ".lora_B.weight"}


@dataclass
class Base:
    """A valid adapter: ``modules`` canonical key → base weight shape, written in ``fmt``."""

    arch: str
    fmt: str
    modules: dict
    rank: int
    alpha: float | None
    dtype: torch.dtype
    seed: int

    def names(self) -> dict[str, str]:
        return {k: module_name(k, self.arch, self.fmt) for k in self.modules}

    def state_dict(self) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        suf = role_suffixes(self.fmt)
        out = {}
        for key, shape in self.modules.items():
            name = module_name(key, self.arch, self.fmt)
            o, i, kernel = shape[0], shape[1], tuple(shape[2:])
            out[name + suf["down"]] = (torch.randn(self.rank, i, *kernel, generator=g) * 0.1).to(self.dtype)
            out[name + suf["up"]] = (torch.randn(o, self.rank, *((1, 1) if kernel else ()), generator=g) * 0.1).to(self.dtype)
            if self.alpha is not None and "alpha" in suf:
                out[name + suf["alpha"]] = torch.tensor(float(self.alpha))
        return out


@dataclass
class Case:
    """One input. ``strict``: must be refused. ``expected_arch``: read as for a model of that arch."""

    kind: str
    data: bytes | None = None  # file contents (None: `files` describes a folder)
    strict: bool = True
    expected_arch: str | None = None
    files: dict = field(default_factory=dict)  # folder cases: relative path -> bytes
    note: str = ""

    def __repr__(self) -> str:  # short: hypothesis prints failing cases
        size = len(self.data) if self.data is not None else {k: len(v) for k, v in self.files.items()}
        head = self.data[:160] if self.data is not None else b""
        return (f"Case(kind={self.kind!r}, note={self.note!r}, strict={self.strict}, "
                f"expected_arch={self.expected_arch!r}, size={size}, head={head!r})")


def to_bytes(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> bytes:
    return st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def pack(header, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors-shaped byte string: u64 little-endian header length, header, data."""
    if isinstance(header, (dict, list)):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def unpack(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


# --------------------------------------------------------------------------- base strategy


@st.composite
def bases(draw, archs=("sd1", "sdxl"), formats=None) -> Base:
    pairs = [(a, f) for a in archs for f in FORMATS[a] if formats is None or f in formats]
    arch, fmt = draw(st.sampled_from(pairs))
    pool = POOLS[arch]
    if fmt == "peft":  # one component per peft state dict
        pool = {k: v for k, v in pool.items() if k.startswith("unet.")}
    keys = draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=3, unique=True))
    alpha = draw(st.one_of(st.none(), st.sampled_from([1.0, 2.0, 4.0, 0.5, 16.0]))) if fmt in KOHYA_LIKE else None
    return Base(arch=arch, fmt=fmt, modules={k: pool[k] for k in keys}, rank=draw(st.integers(1, 4)), alpha=alpha,
                dtype=draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float32,
                                            torch.float8_e4m3fn])),
                seed=draw(st.integers(0, 2**16)))


def _pick_module(draw, sd: dict, base: Base) -> tuple[str, dict[str, str]]:
    """A module of ``base`` and its tensor keys by role."""
    name = draw(st.sampled_from(sorted(base.names().values())))
    suf = role_suffixes(base.fmt)
    return name, {role: name + s for role, s in suf.items() if name + s in sd}


# --------------------------------------------------------------------------- LoRA-level defects


def _nan_inf(draw, base, sd, md):
    name, keys = _pick_module(draw, sd, base)
    role = draw(st.sampled_from(sorted(keys)))
    t = sd[keys[role]].clone()
    flat = t.reshape(-1)
    values = [math.nan] if t.dtype == torch.float8_e4m3fn else [math.nan, math.inf, -math.inf]  # e4m3fn has no Inf
    flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(values))
    sd[keys[role]] = flat.reshape(t.shape)
    return "NaN/Inf in " + role


def _zero_rank(draw, base, sd, md):
    name, keys = _pick_module(draw, sd, base)
    down, up = sd[keys["down"]], sd[keys["up"]]
    which = draw(st.sampled_from(["rank", "out", "in"]))
    if which == "rank":
        sd[keys["down"]] = down[:0].clone()
        sd[keys["up"]] = up[:, :0].clone()
    elif which == "out":
        sd[keys["up"]] = up[:0].clone()
    else:
        sd[keys["down"]] = down[:, :0].clone()
    return f"zero {which}"


def _rank_mismatch(draw, base, sd, md):
    name, keys = _pick_module(draw, sd, base)
    up = sd[keys["up"]]
    extra = draw(st.integers(1, 3))
    shape = list(up.shape)
    shape[1] += extra
    sd[keys["up"]] = torch.zeros(shape, dtype=up.dtype)
    return f"up rank +{extra}"


def _missing_partner(draw, base, sd, md):
    name, keys = _pick_module(draw, sd, base)
    drop = draw(st.sampled_from(["down", "up", "both"]))
    for role in (["down", "up"] if drop == "both" else [drop]):
        del sd[keys[role]]
    if drop == "both":  # leave an orphan behind: an alpha (kohya/comfy) or a lone lora_up of another rank
        if base.fmt in KOHYA_LIKE:
            sd[name + ".alpha"] = torch.tensor(1.0)
        else:
            sd[name + ".lora_B.weight"] = torch.zeros(3, 2)
    return f"missing {drop}"


def _bad_dims(draw, base, sd, md):
    name, keys = _pick_module(draw, sd, base)
    role = draw(st.sampled_from(["down", "up"]))
    dims = draw(st.sampled_from([1, 3, 5]))
    sd[keys[role]] = torch.zeros((2,) * dims, dtype=sd[keys[role]].dtype)
    return f"{role} {dims}-D"


def _int_dtype(draw, base, sd, md):
    name, keys = _pick_module(draw, sd, base)
    role = draw(st.sampled_from(["down", "up"]))
    dtype = draw(st.sampled_from([torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool]))
    sd[keys[role]] = sd[keys[role]].to(dtype)
    return f"{role} {dtype}"


def _bad_alpha(draw, base, sd, md):
    name, keys = _pick_module(draw, sd, base)
    sd[name + ".alpha"] = draw(st.sampled_from([
        torch.tensor([1.0, 2.0]), torch.tensor(0.0), torch.tensor(True), torch.zeros(0),
        torch.tensor(float("nan")), torch.tensor(float("inf")),
    ]))
    return "bad alpha"


def _bad_mid(draw, base, sd, md):
    name, keys = _pick_module(draw, sd, base)
    sd[name + ".lora_mid.weight"] = draw(st.sampled_from([
        torch.zeros(base.rank, base.rank), torch.zeros(base.rank + 1, base.rank, 3, 3), torch.zeros(1, 1, 1, 1, 1)]))
    return "bad lora_mid"


FAMILY = {"kohya": "kohya", "kohya_ldm": "kohya", "comfy": "comfy", "diffusers": "diffusers", "peft": "peft"}


def _mixed_formats(draw, base, sd, md):
    others = [f for f in ("kohya", "diffusers", "peft", "comfy") if FAMILY[f] != FAMILY[base.fmt]]
    fmt = draw(st.sampled_from(others))
    key = draw(st.sampled_from(sorted(k for k in SD1 if fmt != "peft" or k.startswith("unet."))))
    extra = Base("sd1", fmt, {key: SD1[key]}, 2, None, torch.float32, 1).state_dict()
    if any(k in sd for k in extra):
        return None
    sd.update(extra)
    return f"{base.fmt} + {fmt}"


def _unknown_module(draw, base, sd, md):
    word = draw(st.sampled_from(["attn9", "to_z", "frobnicate", "lora", "weight", "proj_sideways"]))
    name = draw(st.sampled_from(sorted(base.names().values())))
    sep = "_" if FAMILY[base.fmt] == "kohya" else "."
    bad = name.rsplit(sep, 1)[0] + sep + word
    suf = role_suffixes(base.fmt)
    sd[bad + suf["down"]] = torch.zeros(2, 8)
    sd[bad + suf["up"]] = torch.zeros(8, 2)
    return "unknown module " + word


def _not_lora_key(draw, base, sd, md):
    key = draw(st.sampled_from(["model.diffusion_model.out.2.weight", "lora_unet_x.weight", "weight", "foo",
                                "__metadata__x", "lora_down.weight", ".lora_up.weight", "state_dict.bar",
                                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_dawn.weight"]))
    sd[key] = torch.zeros(2, 2)
    return "not a LoRA key " + key


def _unsupported(draw, base, sd, md):
    name = draw(st.sampled_from(sorted(base.names().values())))
    suffix = draw(st.sampled_from([".dora_scale", ".hada_w1_a", ".hada_w2_b", ".lokr_w1", ".oft_blocks", ".diff",
                                   ".diff_b", ".bias", ".w_norm", ".lora_magnitude_vector"]))
    sd[name + suffix] = torch.zeros(4)
    return "unsupported " + suffix


def _duplicate_module(draw, base, sd, md):
    if base.fmt in ("kohya", "kohya_ldm") and base.arch == "sd1":
        unet = [k for k in base.modules if k in COMFY_SD1 and k.startswith("unet.")]
        if not unet:
            return None
        key = unet[0]
        other = "kohya_ldm" if base.fmt == "kohya" else "kohya"
        mine, twin = module_name(key, "sd1", base.fmt), module_name(key, "sd1", other)
        down, up = sd[mine + ".lora_down.weight"], sd[mine + ".lora_up.weight"]
        sd[twin + ".lora_down.weight"], sd[twin + ".lora_up.weight"] = down.clone(), up.clone()
        return "module in diffusers and LDM spelling"
    if base.fmt == "diffusers":
        key = draw(st.sampled_from(sorted(base.modules)))
        sd[key + ".lora.down.weight"] = sd[key + ".lora_A.weight"].clone()
        return "lora_A and lora.down of one module"
    return None


def _empty(draw, base, sd, md):
    which = draw(st.sampled_from(["nothing", "alpha only"]))
    keep = {k: v for k, v in sd.items() if k.endswith(".alpha")} if which == "alpha only" else {}
    if which == "alpha only" and not keep:
        keep = {kohya_name(next(iter(SD1)), "sd1") + ".alpha": torch.tensor(4.0)}
    sd.clear()
    sd.update(keep)
    return which


def bad_config_values(comp: str, rank: int) -> list[str]:
    """``lora_adapter_metadata`` texts that no LoraConfig can come from (all must be refused)."""
    return [
        "{not json", "[1, 2, 3]", "42", '"text"', "[" * 5000 + "]" * 5000,
        json.dumps({f"{comp}.r": rank + 1}),
        json.dumps({f"{comp}.r": 0}),
        json.dumps({f"{comp}.r": 2.5}),
        json.dumps({f"{comp}.r": rank, f"{comp}.lora_alpha": "abc"}),
        '{"%s.r": %d, "%s.lora_alpha": %s}' % (comp, rank, comp, "9" * 400),
        '{"%s.r": %d, "%s.lora_alpha": %s}' % (comp, rank, comp, "9" * 5000),
        '{"%s.r": Infinity}' % comp,
        json.dumps({f"{comp}.r": rank, f"{comp}.lora_alpha": None}),
        json.dumps({f"{comp}.r": rank, f"{comp}.alpha_pattern": [1, 2]}),
        json.dumps({f"{comp}.r": rank, f"{comp}.alpha_pattern": {".*" * 12 + "Z": 3}}),
        json.dumps({f"{comp}.r": rank, f"{comp}.rank_pattern": {"(a+)+$": 2}}),
        json.dumps({f"{comp}.r": rank, f"{comp}.rank_pattern": {"[": 2}}),
        json.dumps({f"{comp}.r": rank, f"{comp}.use_dora": True}),
        json.dumps({f"{comp}.r": rank, f"{comp}.lora_alpha": float("nan")}),
    ]


def _bad_config_metadata(draw, base, sd, md):
    if base.fmt not in ("diffusers", "peft"):
        return None
    comp = next(iter(base.modules)).split(".", 1)[0]
    md["lora_adapter_metadata"] = draw(st.sampled_from(bad_config_values(comp, base.rank)))
    return "bad LoraConfig metadata"


def _other_arch(draw, base, sd, md):
    """Keys of another architecture: an SDXL-only module in an SD1 read (or the reverse)."""
    if base.fmt == "comfy":
        return None
    other = "sdxl" if base.arch == "sd1" else "sd1"
    key = ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k" if other == "sdxl"
           else "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    fmt = "kohya" if base.fmt == "kohya_ldm" else base.fmt  # (SDXL names are not in the SD1 LDM table here)
    extra = Base(other, fmt, {key: POOLS[other][key]}, 2, None, torch.float32, 2).state_dict()
    mode = draw(st.sampled_from(["added", "only"]))
    if mode == "only":
        sd.clear()
    sd.update(extra)
    return f"{other} key in a {base.arch} read ({mode})", base.arch


def _wrong_width(draw, base, sd, md):
    """LoRA update shape of no real module at that name (width lie); refused when the arch is expected."""
    name, keys = _pick_module(draw, sd, base)
    up = sd[keys["up"]]
    shape = list(up.shape)
    shape[0] += draw(st.integers(1, 7))
    sd[keys["up"]] = torch.zeros(shape, dtype=up.dtype)
    return "update wider than the base weight", base.arch


def _out_of_range_block(draw, base, sd, md):
    if base.fmt not in ("kohya", "diffusers"):
        return None
    name = draw(st.sampled_from(sorted(base.names().values())))
    sep = "_" if base.fmt == "kohya" else "."
    for marker in (f"down{sep}blocks{sep}", f"layers{sep}"):
        if marker in name:
            head, tail = name.split(marker, 1)
            idx, rest = tail.split(sep, 1)
            bad = f"{head}{marker}{int(idx) + draw(st.integers(40, 10**6))}{sep}{rest}"
            for role, s in role_suffixes(base.fmt).items():
                if name + s in sd:
                    sd[bad + s] = sd.pop(name + s)
            return "block index out of range", base.arch
    return None


def _lycoris_module(draw, base, sd):
    """Replace one module of ``base`` by a valid LoHa or LoKr module (LyCORIS kohya suffixes); returns
    (module name, algorithm, base weight shape)."""
    name, keys = _pick_module(draw, sd, base)
    key = next(k for k, n in base.names().items() if n == name)
    shape = base.modules[key]
    for k in keys.values():
        sd.pop(k, None)
    out, inn = shape[0], shape[1] * math.prod(shape[2:])
    g = torch.Generator().manual_seed(base.seed)
    algo = draw(st.sampled_from(["loha", "lokr"]))
    if algo == "loha":
        for i in (1, 2):
            sd[f"{name}.hada_w{i}_a"] = torch.randn(out, 2, generator=g)
            sd[f"{name}.hada_w{i}_b"] = torch.randn(2, inn, generator=g)
    else:  # w1 (a, b) ⊗ w2 (c, d), a·c = out, b·d = in (LyCORIS factorisation: a, b small)
        a = next(f for f in (16, 8, 4, 2, 1) if out % f == 0)
        b = next(f for f in (16, 8, 4, 2, 1) if inn % f == 0)
        sd[f"{name}.lokr_w1"] = torch.randn(a, b, generator=g)
        sd[f"{name}.lokr_w2_a"] = torch.randn(out // a, 2, generator=g)
        sd[f"{name}.lokr_w2_b"] = torch.randn(2, inn // b, generator=g)
    sd[f"{name}.alpha"] = torch.tensor(1.0)
    return name, algo, shape


def _lycoris_truncated(draw, base, sd, md):
    """A LoHa/LoKr factor cut short (its inner rank no longer matches its partner)."""
    name, algo, _ = _lycoris_module(draw, base, sd)
    role = draw(st.sampled_from(["hada_w1_b", "hada_w2_a"] if algo == "loha" else ["lokr_w2_b", "lokr_w2_a"]))
    t = sd[f"{name}.{role}"]
    sd[f"{name}.{role}"] = t[:1] if role.endswith("_b") else t[:, :1]
    return f"{algo} {role} truncated"


def _lokr_missing_w2(draw, base, sd, md):
    name, _, _ = _lycoris_module(draw, base, sd)
    for role in ("lokr_w2_a", "lokr_w2_b", "hada_w1_a"):
        sd.pop(f"{name}.{role}", None)
    if f"{name}.lokr_w1" not in sd:  # was LoHa: make it a LoKr without w2
        for k in [k for k in sd if k.startswith(name + ".hada_")]:
            del sd[k]
        sd[f"{name}.lokr_w1"] = torch.ones(2, 2)
    if draw(st.booleans()):
        sd[f"{name}.lokr_w2_a"] = torch.ones(4, 2)  # half of a decomposed w2
    return "LoKr without (complete) w2"


def _kron_mismatch(draw, base, sd, md):
    """A Kronecker product whose shape fits no weight at that name (refused with the architecture known)."""
    name, _, shape = _lycoris_module(draw, base, sd)
    for k in [k for k in sd if k.startswith(name + ".")]:
        del sd[k]
    sd[f"{name}.lokr_w1"] = torch.ones(draw(st.sampled_from([3, 5, 7])), 2)
    sd[f"{name}.lokr_w2"] = torch.ones(shape[0] // 2 + draw(st.integers(1, 3)), shape[1] // 2)
    return "Kronecker shape of no weight", base.arch


def _nan_dora(draw, base, sd, md):
    name, keys = _pick_module(draw, sd, base)
    out = sd[keys["up"]].shape[0]
    ndim = sd[keys["up"]].dim()
    scale = torch.ones(out, *[1] * (ndim - 1))
    scale.view(-1)[draw(st.integers(0, out - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
    sd[f"{name}.dora_scale"] = scale
    return "NaN/Inf in dora_scale"


# Defects that only exist in some key formats (the others get any format).
DEFECT_FORMATS = {
    "bad_config_metadata": ("diffusers", "peft"), "duplicate_module": ("kohya", "kohya_ldm", "diffusers"),
    "other_arch": ("kohya", "kohya_ldm", "diffusers", "peft"), "out_of_range_block": ("kohya", "diffusers"),
    "lycoris_truncated": ("kohya", "kohya_ldm"), "lokr_missing_w2": ("kohya", "kohya_ldm"),
    "kron_mismatch": ("kohya", "kohya_ldm"), "nan_dora": ("kohya", "kohya_ldm", "comfy"),
}

LORA_DEFECTS = {
    "nan_inf": _nan_inf, "zero_rank": _zero_rank, "rank_mismatch": _rank_mismatch,
    "missing_partner": _missing_partner, "bad_dims": _bad_dims, "int_dtype": _int_dtype,
    "bad_alpha": _bad_alpha, "bad_mid": _bad_mid, "mixed_formats": _mixed_formats,
    "unknown_module": _unknown_module, "not_lora_key": _not_lora_key, "unsupported": _unsupported,
    "duplicate_module": _duplicate_module, "empty": _empty, "bad_config_metadata": _bad_config_metadata,
    "other_arch": _other_arch, "wrong_width": _wrong_width, "out_of_range_block": _out_of_range_block,
    "lycoris_truncated": _lycoris_truncated, "lokr_missing_w2": _lokr_missing_w2, "kron_mismatch": _kron_mismatch,
    "nan_dora": _nan_dora,
}


@st.composite
def malformed_loras(draw, kinds=tuple(LORA_DEFECTS)) -> Case:
    """Valid safetensors, invalid LoRA (strict)."""
    kind = draw(st.sampled_from(kinds))
    base = draw(bases(formats=DEFECT_FORMATS.get(kind)))
    sd, md = base.state_dict(), {}
    result = LORA_DEFECTS[kind](draw, base, sd, md)
    if result is None:  # defect not applicable to this base: fall back to one that always is
        kind, result = "nan_inf", _nan_inf(draw, base, sd, md)
    note, expected = (result, None) if isinstance(result, str) else result
    return Case(kind=kind, data=to_bytes(sd, md or None), strict=True, expected_arch=expected, note=note)


# --------------------------------------------------------------------------- container-level defects


def _header_text(header: dict) -> str:
    return json.dumps(header)


def _entries(header: dict) -> list[str]:
    return [k for k in header if k != "__metadata__"]


@st.composite
def _valid_file(draw) -> tuple[bytes, dict, bytes]:
    base = draw(bases())
    raw = to_bytes(base.state_dict(), draw(st.sampled_from([None, {"ss_network_dim": "4", "format": "pt"}])))
    header, data = unpack(raw)
    return raw, header, data


def _c_truncated(draw, raw, header, data):
    return raw[: draw(st.integers(0, len(raw) - 1))], "truncated"


def _c_header_length(draw, raw, header, data):
    (n,) = struct.unpack("<Q", raw[:8])
    new = draw(st.one_of(st.integers(0, n - 1), st.integers(n + 1, len(raw) + 64),
                         st.integers(len(raw), 2**64 - 1), st.sampled_from([0, 2**63, 2**64 - 1, 100 * 2**20 + 1])))
    return struct.pack("<Q", new) + raw[8:], f"header length {new} (true {n})"


def _c_header_garbage(draw, raw, header, data):
    junk = draw(st.binary(min_size=1, max_size=300))
    return pack(junk, data), "random header bytes"


def _c_invalid_json(draw, raw, header, data):
    text = _header_text(header)
    op = draw(st.sampled_from(["cut", "insert", "delete"]))
    pos = draw(st.integers(0, len(text) - 1))
    if op == "cut":
        text = text[:pos]
    elif op == "insert":
        text = text[:pos] + draw(st.sampled_from(list('{}[]:,"\\x0'))) + text[pos:]
    else:
        text = text[:pos] + text[pos + 1:]
    try:  # Python's json is the oracle: an edit that keeps the text valid JSON (a deleted space, a letter
        json.loads(text)  # inserted into a string) is not this defect; cut the text instead
    except ValueError:
        pass
    else:
        op, text = "cut", _header_text(header)[:pos]
    return pack(text, data), f"JSON {op} at {pos}"


def _c_dtype_lie(draw, raw, header, data):
    name = draw(st.sampled_from(_entries(header)))
    size = DTYPE_SIZES[header[name]["dtype"]]
    header[name]["dtype"] = draw(st.one_of(
        st.sampled_from(sorted(d for d, s in DTYPE_SIZES.items() if s != size)),
        st.sampled_from(["F128", "f32", "", "float", "Q4_K", 32, None, ["F32"]])))
    return pack(header, data), f"dtype {header[name]['dtype']!r}"


def _c_shape_lie(draw, raw, header, data):
    name = draw(st.sampled_from(_entries(header)))
    shape = header[name]["shape"]
    op = draw(st.sampled_from(["scale", "add_dim", "drop_dim", "junk"]))
    if op == "scale":
        i = draw(st.integers(0, max(len(shape) - 1, 0)))
        shape = list(shape) or [1]
        shape[i] = shape[i] * draw(st.integers(2, 1000)) + draw(st.integers(0, 1)) or 7
    elif op == "add_dim":
        shape = list(shape) + [draw(st.integers(2, 64))]
    elif op == "drop_dim" and len(shape) and math.prod(shape[:-1]) != math.prod(shape):
        shape = list(shape[:-1])
    else:
        shape = draw(st.sampled_from([[-1], [1.5], ["4"], [True, 2], [[2]], None, "4x4", [1] * 9, {}, [2**70]]))
    header[name]["shape"] = shape
    return pack(header, data), f"shape {shape!r}"


def _c_offsets(draw, raw, header, data):
    names = _entries(header)
    name = draw(st.sampled_from(names))
    begin, end = header[name]["data_offsets"]
    op = draw(st.sampled_from(["beyond", "reversed", "negative", "junk", "overlap", "shift"]))
    if op == "beyond":
        extra = draw(st.integers(1, 2**40))
        header[name]["data_offsets"] = [begin + extra, end + extra]
    elif op == "reversed":
        header[name]["data_offsets"] = [end, begin] if end != begin else [begin + 1, begin]
    elif op == "negative":
        header[name]["data_offsets"] = [-8, end - begin - 8]
    elif op == "junk":
        header[name]["data_offsets"] = draw(st.sampled_from([[0], [0, 4, 8], ["0", "4"], None, [0.0, 4.0], {}]))
    elif op == "overlap" and len(names) > 1:
        other = draw(st.sampled_from([n for n in names if n != name]))
        ob, oe = header[other]["data_offsets"]
        if (oe - ob) == (end - begin) and ob != begin:
            header[name]["data_offsets"] = [ob, oe]  # two tensors share bytes, a hole elsewhere
        else:
            header[name]["data_offsets"] = [begin + 1, end + 1]
    else:  # shift by a few bytes inside the file
        k = draw(st.integers(1, 16))
        header[name]["data_offsets"] = [begin + k, end + k]
    return pack(header, data), f"offsets {op}"


def _c_memory_bomb(draw, raw, header, data):
    name = draw(st.sampled_from(_entries(header)))
    op = draw(st.sampled_from(["huge_tensor", "huge_header_length", "many_dims", "near_limit_header"]))
    if op == "huge_tensor":  # consistent dtype × shape, byte range terabytes past the end of the file
        dims = draw(st.sampled_from([[2**20, 2**20], [2**31, 2**10], [10**6, 10**6, 4], [2**40]]))
        begin = header[name]["data_offsets"][0]
        header[name] = {"dtype": "F32", "shape": dims, "data_offsets": [begin, begin + 4 * math.prod(dims)]}
        return pack(header, data), f"declares {4 * math.prod(dims)} bytes"
    if op == "many_dims":
        dims = [2**16] * 8
        header[name] = {"dtype": "F64", "shape": dims, "data_offsets": [0, 8 * math.prod(dims)]}
        return pack(header, data), "8 dims of 65536"
    text = _header_text(header).encode()
    if op == "huge_header_length":
        return pack(text, data, length=draw(st.integers(2**32, 2**64 - 1))), "header length ≥ 4 GiB"
    return pack(text, data, length=100 * 2**20 - draw(st.integers(0, 1000))), "header length just under the limit"


def _c_duplicate_json_key(draw, raw, header, data):
    names = _entries(header)
    name = draw(st.sampled_from(names))
    where = draw(st.sampled_from(["tensor", "field", "metadata"]))
    parts = []
    for k, v in header.items():
        if where == "field" and k == name:
            body = json.dumps(v)[1:-1]
            parts.append(f'{json.dumps(k)}: {{{body}, "dtype": {json.dumps(v["dtype"])}}}')
        else:
            parts.append(f"{json.dumps(k)}: {json.dumps(v)}")
        if where == "tensor" and k == name:
            parts.append(f"{json.dumps(k)}: {json.dumps(v)}")
    if where == "metadata":
        parts.append('"__metadata__": {"a": "1"}')
        parts.append('"__metadata__": {"a": "2"}')
    return pack("{" + ", ".join(parts) + "}", data), f"duplicate {where} key"


def _c_bad_entry(draw, raw, header, data):
    name = draw(st.sampled_from(_entries(header)))
    op = draw(st.sampled_from(["not_object", "missing", "extra"]))
    if op == "not_object":
        header[name] = draw(st.sampled_from([[1, 2], 3, "F32", None, True]))
    elif op == "missing":
        del header[name][draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    else:
        header[name]["offset"] = 0
    return pack(header, data), f"entry {op}"


def _c_bad_metadata(draw, raw, header, data):
    header["__metadata__"] = draw(st.sampled_from([[1], "meta", 3, {"a": 1}, {"a": None}, {"a": ["x"]},
                                                   {"a": {"b": "c"}}, {"a": True}]))
    return pack(header, data), f"__metadata__ {header['__metadata__']!r}"


def _c_not_utf8(draw, raw, header, data):
    text = _header_text(header).encode()
    bad = draw(st.sampled_from([b"\xff", b"\xfe\xff", b"\xed\xa0\x80", b"\xc3", b"\x80\x80"]))
    i = text.index(b'"') + 1  # inside the first key
    return pack(text[:i] + bad + text[i:], data), f"invalid UTF-8 {bad!r}"


def _c_deep_nesting(draw, raw, header, data):
    depth = draw(st.sampled_from([2_000, 50_000, 500_000]))
    bracket = draw(st.sampled_from(["[", '{"a":']))
    close = "]" if bracket == "[" else "}"
    return pack('{"x": ' + bracket * depth + "1" + close * depth + "}", data), f"nesting {depth}"


def _c_not_object(draw, raw, header, data):
    return pack(draw(st.sampled_from(["[]", "[1,2]", "3", '"str"', "true", "null", " ", "{}garbage"])), data), \
        "header is not an object"


def _c_tiny(draw, raw, header, data):
    return draw(st.binary(min_size=0, max_size=7)), "shorter than 8 bytes"


def _c_big_int(draw, raw, header, data):
    name = draw(st.sampled_from(_entries(header)))
    text = _header_text(header).replace(json.dumps(header[name]["shape"]), "[" + "7" * 5000 + "]", 1)
    return pack(text, data), "5000-digit integer"


CONTAINER_DEFECTS = {
    "truncated": _c_truncated, "header_length": _c_header_length, "header_garbage": _c_header_garbage,
    "invalid_json": _c_invalid_json, "dtype_lie": _c_dtype_lie, "shape_lie": _c_shape_lie,
    "offsets": _c_offsets, "memory_bomb": _c_memory_bomb, "duplicate_json_key": _c_duplicate_json_key,
    "bad_entry": _c_bad_entry, "bad_metadata": _c_bad_metadata, "not_utf8": _c_not_utf8,
    "deep_nesting": _c_deep_nesting, "not_object": _c_not_object, "tiny": _c_tiny, "big_int": _c_big_int,
}


@st.composite
def malformed_containers(draw, kinds=tuple(CONTAINER_DEFECTS)) -> Case:
    """Not a valid safetensors file (strict)."""
    kind = draw(st.sampled_from(kinds))
    raw, header, data = draw(_valid_file())
    out, note = CONTAINER_DEFECTS[kind](draw, raw, header, data)
    return Case(kind=kind, data=out, strict=True, note=note)


# --------------------------------------------------------------------------- weak cases (may be valid)

NAME_WORDS = ["down", "up", "blocks", "mid", "block", "0", "1", "2", "3", "9", "attentions", "resnets", "transformer",
              "attn1", "attn2", "to", "q", "k", "v", "out", "proj", "in", "ff", "net", "conv1", "conv2", "input",
              "output", "middle", "layers", "self", "attn", "q_proj", "mlp", "fc1", "text", "model", "encoder",
              "time", "emb", "skip", "connection", "shortcut", "conv", "shortcut", "norm", "upsamplers", "downsamplers"]


@st.composite
def random_name_loras(draw) -> Case:
    """Module names stitched from real words under every family prefix, plausible shapes."""
    prefix, sep = draw(st.sampled_from([("lora_unet_", "_"), ("lora_te_", "_"), ("lora_te2_", "_"), ("unet.", "."),
                                        ("text_encoder.", "."), ("diffusion_model.", "."), ("base_model.model.", "."),
                                        ("text_encoders.clip_l.transformer.", "."), ("", ".")]))
    words = draw(st.lists(st.sampled_from(NAME_WORDS), min_size=1, max_size=9))
    name = prefix + sep.join(words)
    out_f, in_f = draw(st.sampled_from([(320, 768), (320, 320), (640, 2048), (768, 768), (1280, 1280), (4, 4)]))
    r = draw(st.integers(1, 3))
    sfx = draw(st.sampled_from([(".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight")]))
    sd = {name + sfx[0]: torch.randn(r, in_f) * 0.1, name + sfx[1]: torch.randn(out_f, r) * 0.1}
    return Case(kind="random_names", data=to_bytes(sd), strict=False, note=name)


@st.composite
def byte_flips(draw) -> Case:
    raw, _, _ = draw(_valid_file())
    buf = bytearray(raw)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(buf) - 1))
        buf[i] = draw(st.integers(0, 255))
    return Case(kind="byte_flip", data=bytes(buf), strict=False)


@st.composite
def metadata_noise(draw) -> Case:
    """Interpreted metadata keys with arbitrary text: hints only, never a crash."""
    base = draw(bases())
    keys = ["ss_base_model_version", "lcm_lora.architecture", "lcm_lora.alpha_none", "ss_v2", "ss_network_dim",
            "lcm_lora.component", "format"]
    md = draw(st.dictionaries(st.sampled_from(keys), st.one_of(
        st.text(max_size=40), st.sampled_from(["all", "[1, 2]", "5", "[" * 3000, '["unet.x"]', "sdxl", "sd_v1"])),
        max_size=4))
    return Case(kind="metadata_noise", data=to_bytes(base.state_dict(), md or None), strict=False)


def any_case() -> st.SearchStrategy[Case]:
    return st.one_of(malformed_containers(), malformed_loras(), random_name_loras(), byte_flips(), metadata_noise())


# --------------------------------------------------------------------------- peft folders


PEFT_CONFIG_DEFECTS = {
    "invalid_json": lambda r: "{r: 4",
    "not_object": lambda r: "[1, 2]",
    "deep": lambda r: "[" * 100_000,
    "big_int": lambda r: '{"r": ' + "9" * 5000 + "}",
    "peft_type": lambda r: json.dumps({"peft_type": "LOHA", "r": r}),
    "r_mismatch": lambda r: json.dumps({"r": r + 1, "lora_alpha": 1}),
    "r_zero": lambda r: json.dumps({"r": 0}),
    "r_float": lambda r: json.dumps({"r": r + 0.5}),
    "r_inf": lambda r: '{"r": Infinity}',
    "alpha_string": lambda r: json.dumps({"r": r, "lora_alpha": "strong"}),
    "alpha_nan": lambda r: '{"r": %d, "lora_alpha": NaN}' % r,
    "alpha_huge": lambda r: '{"r": %d, "lora_alpha": %s}' % (r, "1" * 400),
    "pattern_not_map": lambda r: json.dumps({"r": r, "alpha_pattern": "to_k"}),
    "pattern_bomb": lambda r: json.dumps({"r": r, "rank_pattern": {"(.*)*(.*)*(.*)*$": r}}),
    "pattern_many_regex": lambda r: json.dumps({"r": r, "alpha_pattern": {f"to_.{i}*x": 1 for i in range(40)}}),
    "pattern_bad_regex": lambda r: json.dumps({"r": r, "alpha_pattern": {"to_k[": 1}}),
    "dora": lambda r: json.dumps({"r": r, "use_dora": True}),
    "not_utf8": lambda r: b'{"r": 4, "x": "\xff"}',
}


PEFT_WEIGHT_DEFECTS = ("weights_truncated", "weights_garbage", "weights_nan")
PEFT_KINDS = tuple(sorted(PEFT_CONFIG_DEFECTS)) + PEFT_WEIGHT_DEFECTS


def peft_folder_case(kind: str, base: Base, cut: float = 0.5, garbage: bytes = b"\x10" + b"\0" * 7 + b"{}") -> Case:
    """A peft adapter folder with one defect: bad ``adapter_config.json`` or broken weights."""
    base = Base("sd1", "peft", {k: v for k, v in base.modules.items() if k.startswith("unet.")} or
                {next(iter(SD1)): SD1[next(iter(SD1))]}, base.rank, None, base.dtype, base.seed)
    weights = to_bytes(base.state_dict())
    cfg = json.dumps({"peft_type": "LORA", "r": base.rank, "lora_alpha": base.rank}).encode()
    if kind in PEFT_CONFIG_DEFECTS:
        cfg = PEFT_CONFIG_DEFECTS[kind](base.rank)
        cfg = cfg.encode() if isinstance(cfg, str) else cfg
    elif kind == "weights_truncated":
        weights = weights[: int(cut * (len(weights) - 1))]
    elif kind == "weights_garbage":
        weights = garbage
    else:
        sd = base.state_dict()
        k = sorted(sd)[0]
        t = sd[k].clone()
        t.view(-1)[0] = float("nan")
        sd[k] = t
        weights = to_bytes(sd)
    return Case(kind="peft_" + kind, data=None, strict=True,
                files={"adapter_config.json": cfg, "adapter_model.safetensors": weights})


@st.composite
def malformed_peft_folders(draw) -> Case:
    return peft_folder_case(draw(st.sampled_from(PEFT_KINDS)), draw(bases(archs=("sd1",))),
                            cut=draw(st.floats(0, 0.999)), garbage=draw(st.binary(min_size=8, max_size=64)))


# --------------------------------------------------------------------------- hand-made cases


def handmade_cases() -> list[Case]:
    """Deterministic cases, one per named problem (the issue's list), for library, CLI and nodes."""
    good = Base("sd1", "kohya", dict(list(SD1.items())[:2]), 4, 4.0, torch.float16, 0)
    raw = to_bytes(good.state_dict())
    header, data = unpack(raw)
    first = _entries(header)[0]
    cases = [
        Case("empty_file", b""),
        Case("tiny", b"\x01\x02\x03"),
        Case("truncated", raw[: len(raw) // 2]),
        Case("truncated_header", raw[:20]),
        Case("header_length_zero", struct.pack("<Q", 0) + raw[8:]),
        Case("header_length_beyond_file", struct.pack("<Q", len(raw) * 4) + raw[8:]),
        Case("header_length_2^64-1", struct.pack("<Q", 2**64 - 1) + raw[8:]),
        Case("invalid_json", pack('{"a": {"dtype": "F32",', data)),
        Case("not_utf8", pack(b'{"\xff\xfe": 1}', data)),
        Case("text_file", b"this is a text file, not a LoRA\n" * 10),
        Case("html_error_page", b"<!DOCTYPE html><html><body>404 Not Found</body></html>" * 3),
        Case("zip_file", b"PK\x03\x04" + b"\0" * 200),
        Case("pickle_checkpoint", b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01." + b"\0" * 64),
        Case("deep_nesting", pack('{"x": ' + "[" * 200_000 + "]" * 200_000 + "}", b"")),
        Case("big_int_shape", pack('{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}', b"\0" * 4)),
        Case("memory_bomb_4TB_tensor", pack({first: {"dtype": "F32", "shape": [2**20, 2**20],
                                                     "data_offsets": [0, 4 * 2**40]}}, b"\0" * 64)),
        Case("memory_bomb_16GiB_tensor", pack({first: {"dtype": "F32", "shape": [2**16, 2**16],
                                                       "data_offsets": [0, 4 * 2**32]}}, b"\0" * 64)),
        Case("memory_bomb_header_length", pack(b"{}", b"", length=2**40)),
        Case("memory_bomb_header_near_limit", pack(b"{}", b"", length=100 * 2**20 - 8)),
        Case("dtype_lie", pack({first: {**header[first], "dtype": "F64"}, **{k: v for k, v in header.items() if k != first}}, data)),
        Case("shape_lie", pack({first: {**header[first], "shape": [4, 4, 4]}, **{k: v for k, v in header.items() if k != first}}, data)),
        Case("offsets_out_of_range", pack({k: ({**v, "data_offsets": [v["data_offsets"][0] + 10**9, v["data_offsets"][1] + 10**9]}
                                               if k == first else v) for k, v in header.items()}, data)),
        Case("duplicate_json_keys", pack('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                                         '"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8)),
        Case("no_tensors", pack(b"{}", b"")),
        Case("metadata_only", pack({"__metadata__": {"ss_network_dim": "4"}}, b"")),
    ]
    sd = good.state_dict()
    names = list(good.names().values())
    n0 = names[0]

    def variant(kind, change, expected_arch=None, metadata=None):
        s = {k: v.clone() for k, v in sd.items()}
        change(s)
        cases.append(Case(kind, to_bytes(s, metadata), expected_arch=expected_arch))

    variant("nan", lambda s: s[n0 + ".lora_up.weight"].view(-1).__setitem__(0, float("nan")))
    variant("inf", lambda s: s[n0 + ".lora_down.weight"].view(-1).__setitem__(3, float("-inf")))
    variant("nan_alpha", lambda s: s.__setitem__(n0 + ".alpha", torch.tensor(float("nan"))))
    variant("zero_rank", lambda s: (s.__setitem__(n0 + ".lora_down.weight", torch.zeros(0, s[n0 + ".lora_down.weight"].shape[1])),
                                    s.__setitem__(n0 + ".lora_up.weight", torch.zeros(s[n0 + ".lora_up.weight"].shape[0], 0))))
    variant("mismatched_up_down", lambda s: s.__setitem__(n0 + ".lora_up.weight", torch.zeros(s[n0 + ".lora_up.weight"].shape[0], 7)))
    variant("missing_up", lambda s: s.pop(n0 + ".lora_up.weight"))
    variant("alpha_zero", lambda s: s.__setitem__(n0 + ".alpha", torch.tensor(0.0)))
    variant("int_weights", lambda s: s.__setitem__(n0 + ".lora_down.weight", s[n0 + ".lora_down.weight"].to(torch.int32)))
    variant("mixed_formats", lambda s: s.update(Base("sd1", "diffusers", {next(iter(SD1)): SD1[next(iter(SD1))]}, 2, None,
                                                     torch.float32, 1).state_dict()))
    variant("unsupported_dora", lambda s: s.__setitem__(n0 + ".dora_scale", torch.ones(4)))
    variant("not_a_lora_tensor", lambda s: s.__setitem__("model.diffusion_model.out.2.weight", torch.ones(4)))
    xl = Base("sdxl", "kohya", dict(SDXL), 4, 4.0, torch.float16, 3).state_dict()
    cases.append(Case("other_architecture_sdxl_for_sd1", to_bytes(xl), expected_arch="sd1"))
    variant("mixed_architectures", lambda s: s.update(xl), expected_arch="sd1")
    diffusers = Base("sd1", "diffusers", dict(list(SD1.items())[:2]), 4, None, torch.float32, 5).state_dict()
    for i, text in enumerate(bad_config_values("unet", 4)):
        cases.append(Case(f"bad_diffusers_config_{i}", to_bytes(diffusers, {"lora_adapter_metadata": text}),
                          note=text[:60]))
    for i, text in enumerate(["5", "null", '{"a": 1}', "[" * 3000, "9" * 5000, '["unet.x", 3]', "all"]):
        cases.append(Case(f"alpha_none_noise_{i}", to_bytes(diffusers, {"lcm_lora.alpha_none": text}), strict=False,
                          note=text[:60]))
    # 800 KB on disk, a 40 GB dense ΔW: the update shape must be checked before anything forms it
    k0 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    cases.append(Case("outsize_update_40GB_dense", to_bytes({k0 + ".lora_down.weight": torch.zeros(1, 100_000),
                                                             k0 + ".lora_up.weight": torch.zeros(100_000, 1)}),
                      expected_arch="sd1"))
    cases += [peft_folder_case(kind, good) for kind in PEFT_KINDS]
    cases += structural_matrix()
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float64):  # valid, unusual dtypes
        valid = Base("sd1", "kohya", dict(SD1), 2, 2.0, dtype, 9).state_dict()
        cases.append(Case(f"valid_{str(dtype).replace('torch.', '')}", to_bytes(valid), strict=False))
    return cases


def structural_matrix() -> list[Case]:
    """Every structural defect in every key format, deterministically (the random mix may miss a pair)."""
    out = []
    conv = "unet.down_blocks.0.resnets.0.conv1"
    for fmt in FORMATS["sd1"]:
        base = Base("sd1", fmt, {k: SD1[k] for k in (next(iter(SD1)), conv)}, 2, 2.0 if fmt in KOHYA_LIKE else None,
                    torch.float16, 7)
        for target in (next(iter(SD1)), conv):
            name = module_name(target, "sd1", fmt)
            suf = role_suffixes(fmt)
            defects = {
                **{f"{role}_{d}d": (lambda s, r=role, d=d: s.__setitem__(name + suf[r], torch.zeros((2,) * d)))
                   for role in ("down", "up") for d in (0, 1, 3, 5)},
                "zero_rank": lambda s: (s.__setitem__(name + suf["down"], s[name + suf["down"]][:0].clone()),
                                        s.__setitem__(name + suf["up"], s[name + suf["up"]][:, :0].clone())),
                "rank_mismatch": lambda s: s.__setitem__(name + suf["up"], torch.cat([s[name + suf["up"]]] * 2, 1)),
                "no_down": lambda s: s.pop(name + suf["down"]),
                "no_up": lambda s: s.pop(name + suf["up"]),
                "int_down": lambda s: s.__setitem__(name + suf["down"], s[name + suf["down"]].to(torch.int16)),
                "mid_2d": lambda s: s.__setitem__(name + ".lora_mid.weight", torch.zeros(2, 2)),
            }
            for label, change in defects.items():
                sd = base.state_dict()
                change(sd)
                out.append(Case(f"matrix_{fmt}_{target.rsplit('.', 1)[-1]}_{label}", to_bytes(sd)))
    return out
