"""Plan how to run a model on a machine: device, offload, threads, context, mmap.

:func:`plan` is pure code over a :class:`~ggrun.hardware.Hardware` and a
:class:`ModelShape` (read from the GGUF's metadata and tensor table, without loading
anything), so ``ggrun fit`` answers "will it run, and how?" for this machine or for a
hardware profile. Explicit user values always win; a value that cannot work raises
before llama.cpp allocates anything.

Memory, as llama.cpp allocates it:

- **Weights**: the GGUF's tensor bytes. With GPU offload, llama.cpp puts the last
  ``n_gpu_layers`` repeating layers on the GPU; ``n_gpu_layers > n_layer`` also moves
  the output layer (with tied embeddings, a copy of ``token_embd``). The input
  embedding always stays in RAM (``llama-model.cpp``, ``dev_input`` is the CPU).
- **KV cache**: ``n_ctx × Σ_layers n_head_kv × (key_length + value_length) × 2`` bytes
  (F16 K and V). Qwen3-1.7B at 4096: 28 × 8 × (128 + 128) × 2 × 4096 = 448 MiB.
- **Compute buffer**: with flash attention (llama.cpp's default ``auto`` turns it on
  for CPU, CUDA and Metal), ``4 × n_ubatch × (n_vocab + 2 × n_embd)`` bytes: the
  logits of one micro-batch dominate. Measured with llama.cpp's own log on this
  build: SmolLM2-135M 98.25 MiB, Qwen2.5-0.5B 300.25, Qwen2.5-1.5B 302.75,
  Qwen3-1.7B 304.75 at n_ubatch 512: the formula gives exactly these.
- **Reserve**: 1 GiB is kept free on a GPU, as ollama and llama.cpp's ``--fit`` do.
  On Apple Silicon the GPU budget is Metal's recommended working set (about 2/3 of
  RAM up to 36 GiB, 3/4 above), not all of the unified memory.

Rules: the GPU backend in order CUDA, Metal, ROCm, Vulkan, when this build has it
and a device is present, else the CPU; layers are offloaded while they fit; mmap is
on, except when every layer lives on a discrete GPU (loading is faster without it);
generation threads are the physical performance cores, prompt threads all logical
CPUs. When the default context does not fit, the plan shrinks it and says so; when
nothing fits, the error proposes a smaller context or quant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gguf.constants import MODEL_TENSOR, TENSOR_NAMES, Keys

from ggrun.errors import InsufficientMemory, InvalidArgument
from ggrun.ggufcheck import block_index
from ggrun.gguffile import ArrayValue, GGUFInfo
from ggrun.hardware import BACKENDS, GIB, GPU, Hardware

DEFAULT_CTX = 4096
THINKING_CTX = (4096, 8192, 16384)  # default contexts for a thinking model
# bytes per KV element against f16's 2, as (numerator, denominator): q8_0 stores 32
# values in 34 bytes, q4_0 in 18
CACHE_BYTES = {"f16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32)}
DEFAULT_BATCH = 512
GPU_RESERVE = GIB
CTX_STEP = 256
MIN_CTX = 512
MIB = 1 << 20
_WEIGHT = {t: f"{TENSOR_NAMES[t]}.weight" for t in (MODEL_TENSOR.OUTPUT, MODEL_TENSOR.OUTPUT_NORM)}


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model."""

    name: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    kv_bytes_per_token: tuple[int, ...]  # per layer, K and V (F16 unless with_cache)
    layer_bytes: tuple[int, ...]  # weights of each repeating layer
    input_bytes: int  # token embedding (always in RAM)
    output_bytes: int  # output layer as it would sit on a GPU
    weights_bytes: int  # all tensors, as stored
    n_params: int = 0
    quant: str = ""
    estimated: bool = False  # from presets/models.yaml, not from a file
    thinking: bool = False  # its chat template has <think> blocks (Qwen3)

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> ModelShape:
        """The shape of a validated GGUF (:func:`~ggrun.gguffile.read_gguf` bounds every
        value read here, so this arithmetic stays small)."""
        n_layer = _int(info.param(Keys.LLM.BLOCK_COUNT))
        n_embd = _int(info.param(Keys.LLM.EMBEDDING_LENGTH))
        heads = _per_layer(info.param(Keys.Attention.HEAD_COUNT), n_layer)
        kv_heads = _per_layer(info.param(Keys.Attention.HEAD_COUNT_KV), n_layer) or heads
        kv: list[int] = []
        for i in range(n_layer):
            h = heads[i] if i < len(heads) else 0
            hd = n_embd // h if h else 0
            k = _int(info.param(Keys.Attention.KEY_LENGTH)) or hd
            v = _int(info.param(Keys.Attention.VALUE_LENGTH)) or hd
            kv.append((kv_heads[i] if i < len(kv_heads) else 0) * (k + v) * 2)
        layers = [0] * n_layer
        by_name: dict[str, int] = {}
        for t in info.tensors:
            by_name[t.name] = t.nbytes
            block = block_index(t.name)
            if block is not None and block < n_layer:
                layers[block] += t.nbytes
        embd_name = TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD] + "."
        embd = sum(v for k, v in by_name.items() if k.startswith(embd_name))
        out = by_name.get(_WEIGHT[MODEL_TENSOR.OUTPUT], embd) + by_name.get(
            _WEIGHT[MODEL_TENSOR.OUTPUT_NORM], 0
        )
        return cls(
            name=info.path.name,
            n_layer=n_layer,
            n_embd=n_embd,
            n_vocab=info.n_vocab or _int(info.param(Keys.LLM.VOCAB_SIZE)),
            n_ctx_train=info.context_length or DEFAULT_CTX,
            kv_bytes_per_token=tuple(kv),
            layer_bytes=tuple(layers),
            input_bytes=embd,
            output_bytes=out,
            weights_bytes=info.weights_bytes,
            n_params=info.n_params,
            quant=info.file_type,
            thinking="<think>" in (info.chat_template or ""),
        )

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any], size: int, quant: str) -> ModelShape:
        """An estimate for a model not downloaded yet, from its alias's ``shape``."""
        n_layer, n_embd, n_vocab = spec["n_layer"], spec["n_embd"], spec["n_vocab"]
        n_params = spec["n_params"]
        embd_params = n_vocab * n_embd
        per_byte = size / n_params
        layer = int((n_params - embd_params * (1 if spec.get("tied") else 2)) / n_layer * per_byte)
        embd = int(embd_params * per_byte)
        return cls(
            name=name,
            n_layer=n_layer,
            n_embd=n_embd,
            n_vocab=n_vocab,
            n_ctx_train=spec["context"],
            kv_bytes_per_token=(spec["n_head_kv"] * spec["head_dim"] * 2 * 2,) * n_layer,
            layer_bytes=(layer,) * n_layer,
            input_bytes=embd,
            output_bytes=embd,
            weights_bytes=size,
            n_params=n_params,
            quant=quant.upper(),
            estimated=True,
            thinking=bool(spec.get("thinking")),
        )

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.weights_bytes / self.n_params if self.n_params else 0.0

    def with_cache(self, cache_type: str) -> ModelShape:
        """The same model with its KV cache in ``cache_type`` (f16, q8_0, q4_0)."""
        num, den = CACHE_BYTES[cache_type]  # bytes per element, against f16's 2
        per = tuple(b * num // (2 * den) for b in self.kv_bytes_per_token)
        return dataclasses.replace(self, kv_bytes_per_token=per)

    def kv_bytes(self, n_ctx: int, layers: int | None = None) -> int:
        """KV cache of ``n_ctx`` tokens, for all layers or the last ``layers`` ones."""
        per = self.kv_bytes_per_token
        chosen = per if layers is None else per[len(per) - layers :] if layers else ()
        return n_ctx * sum(chosen)

    def compute_bytes(self, n_ubatch: int) -> int:
        return 4 * n_ubatch * (self.n_vocab + 2 * self.n_embd)


def _int(v: Any) -> int:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else 0


def _per_layer(v: Any, n: int) -> list[int]:
    if isinstance(v, ArrayValue):
        return [int(x) for x in v.values] if v.values else []
    return [_int(v)] * n if _int(v) else []


@dataclass(frozen=True)
class Plan:
    """How a model will run; every field is what gets passed to llama.cpp."""

    model: str
    hardware: str
    device: str  # cpu, cuda, metal, rocm, vulkan
    device_name: str
    n_ctx: int
    n_gpu_layers: int  # 0 = CPU only; n_layer + 1 = everything, output layer included
    n_layer: int
    n_threads: int
    n_threads_batch: int
    n_batch: int
    use_mmap: bool
    flash_attn: str
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    gpu_bytes: int  # what lives on the GPU
    ram_bytes: int  # what lives in RAM
    budget_bytes: int  # memory the device offers (GPU after the reserve, or RAM)
    max_ctx: int  # the largest context that fits with this offload
    cache_type: str = "f16"  # the KV cache's type (llama.cpp's --cache-type-k/-v)
    estimated: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        """GPU plus RAM (a GPU holds its own copy of a tied output embedding)."""
        return self.gpu_bytes + self.ram_bytes

    def summary(self) -> str:
        where = self.device if self.device == "cpu" else f"{self.device} ({self.device_name})"
        layers = (
            f", {self.n_gpu_layers}/{self.n_layer + 1} layers on GPU" if self.n_gpu_layers else ""
        )
        return (
            f"{where}{layers}, ctx {self.n_ctx}, threads {self.n_threads}/"
            f"{self.n_threads_batch}, batch {self.n_batch}, "
            f"mmap {'on' if self.use_mmap else 'off'}, flash attention {self.flash_attn}, "
            f"KV cache {self.cache_type} ({_gib(self.kv_bytes)})"
        )


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def pick_gpu(hw: Hardware, device: str | None = None) -> GPU | None:
    """The GPU a plan uses: ``device``'s, or the preferred backend's with most free memory."""
    if device == "cpu":
        return None
    if device is not None:
        if device not in BACKENDS:
            raise InvalidArgument(f"unknown device {device!r} (use cpu, {', '.join(BACKENDS)})")
        if device not in hw.backends:
            raise InvalidArgument(
                f"this llama-cpp-python build has no {device} support "
                f"(it has: {', '.join(hw.backends) or 'CPU only'}); reinstall it with "
                f'CMAKE_ARGS="-DGGML_{device.upper()}=on" pip install --force-reinstall '
                "--no-cache-dir llama-cpp-python"
            )
    gpus = [g for g in hw.usable_gpus if device is None or g.backend == device]
    if not gpus:
        if device is not None:
            raise InvalidArgument(f"no {device} device found on {hw.name}")
        return None
    order = {b: i for i, b in enumerate(BACKENDS)}
    return min(gpus, key=lambda g: (order.get(g.backend, 99), -g.free_bytes))


def gpu_budget(gpu: GPU, hw: Hardware) -> int:
    free = gpu.free_bytes
    if gpu.unified and hw.ram_available:
        free = min(free, hw.ram_available)
    return max(0, free - GPU_RESERVE)


def _layout(
    shape: ModelShape, n_ctx: int, ngl: int, n_ubatch: int
) -> tuple[int, int]:  # (gpu bytes, ram bytes)
    on_gpu_layers = min(ngl, shape.n_layer)
    gpu = 0
    if ngl:
        gpu = sum(shape.layer_bytes[shape.n_layer - on_gpu_layers :])
        gpu += shape.kv_bytes(n_ctx, on_gpu_layers) + shape.compute_bytes(n_ubatch)
        if ngl > shape.n_layer:
            gpu += shape.output_bytes
    weights_ram = shape.weights_bytes - sum(shape.layer_bytes[shape.n_layer - on_gpu_layers :])
    if ngl > shape.n_layer:
        weights_ram = max(shape.input_bytes, weights_ram - shape.output_bytes)
    kv_ram = shape.kv_bytes(n_ctx) - shape.kv_bytes(n_ctx, on_gpu_layers)
    compute_ram = (
        shape.compute_bytes(n_ubatch) if ngl <= shape.n_layer else 8 * n_ubatch * shape.n_embd
    )
    return gpu, weights_ram + kv_ram + compute_ram


def _most_layers(shape: ModelShape, n_ctx: int, n_ubatch: int, gpu_cap: int) -> int:
    """How many layers fit on the GPU (``n_layer + 1`` counts the output layer)."""
    n = 0
    while n <= shape.n_layer and _layout(shape, n_ctx, n + 1, n_ubatch)[0] <= gpu_cap:
        n += 1
    return n


def _fits(
    shape: ModelShape, n_ctx: int, ngl: int, n_ubatch: int, gpu_cap: int, ram_cap: int
) -> bool:
    gpu, ram = _layout(shape, n_ctx, ngl, min(n_ubatch, n_ctx))
    return gpu <= gpu_cap and ram <= ram_cap


def _max_ctx(shape: ModelShape, ngl: int, n_batch: int, gpu_cap: int, ram_cap: int) -> int:
    lo, hi = 0, max(shape.n_ctx_train, CTX_STEP) // CTX_STEP
    while lo < hi:  # largest multiple of CTX_STEP that fits
        mid = (lo + hi + 1) // 2
        if _fits(shape, mid * CTX_STEP, ngl, n_batch, gpu_cap, ram_cap):
            lo = mid
        else:
            hi = mid - 1
    return lo * CTX_STEP


def plan(
    shape: ModelShape,
    hardware: Hardware,
    *,
    n_ctx: int | None = None,
    device: str | None = None,
    gpu_layers: int | str | None = None,  # None/"auto", N, or "all"
    n_threads: int | None = None,
    n_threads_batch: int | None = None,
    n_batch: int = DEFAULT_BATCH,
    use_mmap: bool | None = None,
    cache_type: str | None = None,  # f16, q8_0, q4_0; None/"auto": chosen here
    thinking: bool | None = None,  # a thinking model (default: the shape's); see THINKING_CTX
) -> Plan:
    """Decide device, offload, context, KV cache type, threads and mmap; raise when it
    cannot work.

    ``auto`` cache: f16, or q8_0 when f16 would shrink the context q8_0 gives. A
    thinking model's default context is the largest of :data:`THINKING_CTX` whose KV cache
    takes at most a quarter of the memory; its cache type is the one that gives the
    larger context (f16 on a tie).
    """
    thinking = shape.thinking if thinking is None else thinking
    if cache_type not in (None, "auto", *CACHE_BYTES):
        raise InvalidArgument(f"cache type must be auto, {', '.join(CACHE_BYTES)}: {cache_type}")
    if cache_type in (None, "auto"):
        tries = [_plan(shape, hardware, n_ctx, c, thinking, device, gpu_layers, n_threads,
                       n_threads_batch, n_batch, use_mmap) for c in ("f16", "q8_0")]  # fmt: skip
        f16, q8 = tries
        shrunk = any(n.startswith("context reduced") for n in f16.notes)
        return q8 if (f16.n_ctx < q8.n_ctx and (thinking or shrunk)) else f16
    return _plan(shape, hardware, n_ctx, cache_type, thinking, device, gpu_layers, n_threads,
                 n_threads_batch, n_batch, use_mmap)  # fmt: skip


def thinking_ctx(shape: ModelShape, budget: int) -> int:
    """The largest of :data:`THINKING_CTX` whose KV cache takes at most a quarter of
    ``budget`` (and that the model was trained for); at least the smallest."""
    fits = [c for c in THINKING_CTX if c <= shape.n_ctx_train and 4 * shape.kv_bytes(c) <= budget]
    return max(fits, default=min(THINKING_CTX[0], shape.n_ctx_train))


def _plan(
    shape: ModelShape,
    hw: Hardware,
    n_ctx: int | None,
    cache_type: str,
    thinking: bool,
    device: str | None,
    gpu_layers: int | str | None,
    n_threads: int | None,
    n_threads_batch: int | None,
    n_batch: int,
    use_mmap: bool | None,
) -> Plan:
    shape = shape.with_cache(cache_type)
    notes: list[str] = []
    gpu = pick_gpu(hw, device)
    gpu_cap = gpu_budget(gpu, hw) if gpu else 0
    ram_cap = hw.ram_available or hw.ram_total
    full = shape.n_layer + 1
    ctx = n_ctx or min(shape.n_ctx_train, DEFAULT_CTX)
    if n_ctx is None and thinking:
        ctx = thinking_ctx(shape, gpu_cap or ram_cap)
    ubatch = min(n_batch, ctx)

    if gpu is None:
        if gpu_layers not in (None, "auto", 0):
            why = "--device cpu" if device == "cpu" else "no usable GPU"
            raise InvalidArgument(f"--gpu-layers {gpu_layers} needs a GPU ({why} on {hw.name})")
        ngl = 0
    elif gpu_layers == "all":
        ngl = full
    elif isinstance(gpu_layers, int):
        if gpu_layers < 0:
            raise InvalidArgument(f"--gpu-layers must be >= 0, got {gpu_layers}")
        ngl = min(gpu_layers, full)
    else:  # auto: as many layers as fit, the output layer last
        ngl = _most_layers(shape, ctx, ubatch, gpu_cap)
        if ngl == 0:
            notes.append(f"nothing fits in {gpu.name}'s free memory; running on the CPU")
    if gpu is not None and ngl > 0:
        need = _layout(shape, ctx, ngl, ubatch)[0]
        if need > gpu_cap:
            most = _most_layers(shape, ctx, ubatch, gpu_cap)
            raise InsufficientMemory(
                f"{ngl} layers of {shape.name} with a {ctx}-token context need "
                f"{_gib(need)} on {gpu.name}, which has {_gib(gpu_cap)} free after a "
                f"{_gib(GPU_RESERVE)} reserve; at most {most} layers fit "
                "(use --gpu-layers auto or a smaller --ctx)"
            )

    max_ctx = _max_ctx(shape, ngl, n_batch, gpu_cap, ram_cap)
    if not _fits(shape, ctx, ngl, ubatch, gpu_cap, ram_cap):
        where = "RAM" if ngl == 0 else "memory"
        gpu_need, ram_need = _layout(shape, ctx, ngl, ubatch)
        msg = (
            f"{shape.name} with a {ctx}-token context needs {_gib(gpu_need + ram_need)}, "
            f"more than the {_gib(ram_cap + gpu_cap)} of available {where} on {hw.name}"
        )
        if n_ctx is None and max_ctx >= MIN_CTX:
            notes.append(f"context reduced from {ctx} to {max_ctx} tokens to fit in {where}")
            ctx, ubatch = max_ctx, min(n_batch, max_ctx)
        elif max_ctx >= MIN_CTX:
            raise InsufficientMemory(f"{msg}; the largest context that fits is {max_ctx}")
        else:
            raise InsufficientMemory(f"{msg}; try a smaller quant (e.g. q4_k_m) or model")

    discrete_full = gpu is not None and not gpu.unified and ngl == full
    mmap = use_mmap if use_mmap is not None else not discrete_full
    gpu_bytes, ram_bytes = _layout(shape, ctx, ngl, ubatch)
    if ctx > shape.n_ctx_train:
        notes.append(
            f"a {ctx}-token context is beyond the {shape.n_ctx_train} tokens the model "
            "was trained on; quality may drop past that"
        )
    if shape.estimated:
        notes.append("sizes estimated from presets/models.yaml (model not downloaded)")
    return Plan(
        model=shape.name,
        hardware=hw.name,
        device=gpu.backend if gpu and ngl else "cpu",
        device_name=gpu.name if gpu and ngl else hw.cpu,
        n_ctx=ctx,
        n_gpu_layers=ngl,
        n_layer=shape.n_layer,
        n_threads=n_threads or hw.generation_threads,
        n_threads_batch=n_threads_batch or max(n_threads or 0, hw.batch_threads),
        n_batch=n_batch,
        use_mmap=mmap,
        flash_attn="on" if cache_type != "f16" else "auto",  # a quantized V cache needs it
        weights_bytes=shape.weights_bytes,
        kv_bytes=shape.kv_bytes(ctx),
        compute_bytes=shape.compute_bytes(ubatch),
        gpu_bytes=gpu_bytes,
        ram_bytes=ram_bytes,
        budget_bytes=gpu_cap if gpu and ngl else ram_cap,
        max_ctx=max_ctx,
        cache_type=cache_type,
        estimated=shape.estimated,
        notes=tuple(notes),
    )


def shapes_for(ref: str) -> list[tuple[str, ModelShape]]:
    """``(label, shape)`` for a GGUF path, an alias's quant, or every quant of an alias.

    A quant that is not downloaded is estimated from the alias's ``shape`` in
    ``presets/models.yaml``; a quant with neither a file nor an estimate is left out.
    """
    from ggrun import models
    from ggrun.gguffile import read_gguf

    if models.looks_like_path(ref):
        path = models.resolve(ref)
        return [(path.name, ModelShape.from_gguf(read_gguf(path)))]
    alias, quant = models.parse_ref(ref)
    quants = [quant] if ":" in ref else list(alias.quants)
    out = []
    for q in quants:
        entry = alias.quants[q]
        local = models.local_path(alias, q)
        label = f"{alias.name}:{q}"
        if local is not None:
            out.append((label, ModelShape.from_gguf(read_gguf(local))))
        elif alias.shape and (entry.size or entry.approx_size):
            size = entry.size or entry.approx_size or 0
            out.append((label, ModelShape.from_spec(label, alias.shape, size, q)))
    if not out:
        models.resolve(ref)  # raises the usual "not downloaded" error
    return out


def plan_model(
    model: str | ModelShape,
    hardware: Hardware | None = None,
    n_ctx: int | None = None,
    **overrides: Any,
) -> Plan:
    """The plan for a model (path, alias or shape) on this machine or on ``hardware``."""
    from ggrun.hardware import detect_hardware

    shape = model if isinstance(model, ModelShape) else shapes_for(model)[0][1]
    return plan(shape, hardware or detect_hardware(), n_ctx=n_ctx, **overrides)


@dataclass(frozen=True)
class QuantFit:
    label: str
    bits_per_weight: float
    plan: Plan | None
    error: str = ""


def fit_quants(
    ref: str, hardware: Hardware, n_ctx: int | None = None, **overrides: Any
) -> tuple[list[QuantFit], QuantFit | None]:
    """Plan every quant of ``ref``; the best is the most precise one that fits."""
    fits, ok = [], []
    for label, shape in shapes_for(ref):
        bpw = shape.bits_per_weight
        try:
            p = plan(shape, hardware, n_ctx=n_ctx, **overrides)
        except InsufficientMemory as e:
            fits.append(QuantFit(label, bpw, None, str(e)))
            continue
        fits.append(QuantFit(label, bpw, p))
        if not any(n.startswith("context reduced") for n in p.notes):  # not shrunk to fit
            ok.append(fits[-1])
    best = max(ok, key=lambda f: f.bits_per_weight, default=None)
    return fits, best


def check_draft(plan: Plan, draft: ModelShape, hw: Hardware) -> None:
    """A draft model for speculative decoding sits in RAM beside the planned model: its
    weights, its own KV cache at the same context, and its compute buffer must fit in
    what the plan leaves. It runs between the target's steps, on the same threads."""
    need = (
        draft.weights_bytes
        + draft.kv_bytes(plan.n_ctx)
        + draft.compute_bytes(min(DEFAULT_BATCH, plan.n_ctx))
    )
    left = (hw.ram_available or hw.ram_total) - plan.ram_bytes
    if need > left:
        raise InsufficientMemory(
            f"the draft model {draft.name} needs {_gib(need)} (weights, KV cache, buffers) "
            f"beside the {_gib(plan.ram_bytes)} planned for the model, and only {_gib(left)} "
            "is left; drop --draft, or use --speculate lookup"
        )
