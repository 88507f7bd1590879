"""``ggrun doctor`` (this machine and build) and ``ggrun fit`` (will this model run?)."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

import typer

from ggrun.cli.options import LOAD, ModelArg, load_kwargs, with_options

GIB = 1 << 30

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
HardwareOpt = Annotated[
    str | None,
    typer.Option(
        "--hardware",
        help="Plan for another machine: a profile name from presets/hardware "
        "(mac-m1-8gb, pi5-4gb, cuda-8gb, ...) or a YAML file.",
    ),
]


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _hardware(profile: str | None) -> Any:
    from ggrun import hardware

    return hardware.load_profile(profile) if profile else hardware.detect_hardware()


def doctor(
    hardware: HardwareOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show this machine, what this llama.cpp build can use, and ggrun's default settings."""
    from ggrun import hardware as hwmod
    from ggrun.planner import pick_gpu

    hw = _hardware(hardware)
    warnings = hwmod.warnings(hw)
    gpu = pick_gpu(hw)  # the device every command's plan starts from
    defaults = {
        "device": gpu.backend if gpu else "cpu",
        "threads": hw.generation_threads,
        "threads_batch": hw.batch_threads,
        "gpu_layers": "auto (as many as fit)" if gpu else 0,
        "mmap": True,
    }
    if as_json:
        out = dataclasses.asdict(hw) | {"defaults": defaults, "warnings": warnings}
        typer.echo(json.dumps(out, indent=2))
        return
    rows = [
        ("machine", f"{hw.name}" + (f" ({hw.description})" if hw.description else "")),
        ("os", f"{hw.os} {hw.machine}".strip()),
        ("cpu", hw.cpu),
        (
            "cores",
            f"{hw.physical_cores} physical, {hw.logical_cores} logical"
            + (f", {hw.performance_cores} performance" if hw.performance_cores else ""),
        ),
        ("features", " ".join(hw.features) or "-"),
        ("ram", f"{_gib(hw.ram_available)} available of {_gib(hw.ram_total)}"),
        ("gpu backends", ", ".join(hw.backends) or "none (CPU-only build)"),
    ]
    for g in hw.gpus:
        state = "" if g.usable else " [not usable by this build]"
        kind = ", unified memory" if g.unified else ""
        rows.append(
            ("gpu", f"{g.name} ({g.backend}{kind}): {_gib(g.free_bytes)} free of "
             f"{_gib(g.total_bytes)}{state}")
        )  # fmt: skip
    rows.append(("raspberry pi", hw.raspberry_pi or "no"))
    rows.append(
        (
            "ggrun uses",
            f"{defaults['device']}, {defaults['threads']} generation threads, "
            f"{defaults['threads_batch']} prompt threads, gpu layers {defaults['gpu_layers']}",
        )
    )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")
    for w in warnings:
        typer.echo(f"warning: {w}")


def _plan_dict(p: Any) -> dict[str, Any]:
    return dataclasses.asdict(p) | {"total_bytes": p.total_bytes}


@with_options(LOAD)
def fit(
    model: ModelArg = None,
    hardware: HardwareOpt = None,
    as_json: JsonOpt = False,
    *,
    opts: dict[str, Any],
) -> None:
    """Will MODEL run here (or on --hardware), and how? Loads nothing.

    Prints the memory it needs (weights, KV cache, compute buffers), the device, the
    GPU layers, threads, batch, mmap, the largest context that fits and, for an alias
    with several quants, the most precise quant that fits.
    """
    from ggrun import models, planner

    hw = _hardware(hardware)
    ref = model or models.default_model()[0]
    kw = load_kwargs(opts)
    kw.pop("speculative")  # a draft is planned when it loads
    n_ctx = kw.pop("n_ctx")
    fits, best = planner.fit_quants(ref, hw, n_ctx, **kw)
    if as_json:
        out = {
            "model": ref,
            "hardware": hw.name,
            "quants": [
                {"model": f.label, "bits_per_weight": round(f.bits_per_weight, 2)}
                | ({"plan": _plan_dict(f.plan)} if f.plan else {"error": f.error})
                for f in fits
            ],
            "best": best.label if best else None,
        }
        typer.echo(json.dumps(out, indent=2))
    else:
        for f in fits:
            _render_fit(f)
        if len(fits) > 1:
            typer.echo(
                f"best quant that fits on {hw.name}: {best.label}"
                if best
                else f"no quant of {ref} fits on {hw.name}"
            )
    if not any(f.plan for f in fits):
        raise typer.Exit(1)


def _render_fit(f: Any) -> None:
    typer.echo(f"{f.label} ({f.bits_per_weight:.2f} bits per weight)")
    p = f.plan
    if p is None:
        typer.echo(f"  does not fit: {f.error}")
        return
    rows = [
        ("weights", _gib(p.weights_bytes)),
        ("kv cache", f"{_gib(p.kv_bytes)} for {p.n_ctx} tokens ({p.cache_type})"),
        ("compute", _gib(p.compute_bytes)),
        ("total", f"{_gib(p.total_bytes)} ({_gib(p.gpu_bytes)} GPU, {_gib(p.ram_bytes)} RAM)"),
        ("budget", f"{_gib(p.budget_bytes)} on {p.device}"),
        ("device", p.device if p.device == "cpu" else f"{p.device} ({p.device_name})"),
        ("gpu layers", f"{p.n_gpu_layers} of {p.n_layer + 1} (incl. output layer)"),
        ("threads", f"{p.n_threads} generation, {p.n_threads_batch} prompt"),
        ("batch", str(p.n_batch)),
        ("mmap", "on" if p.use_mmap else "off"),
        ("flash attn", p.flash_attn),
        ("max context", f"{p.max_ctx} tokens"),
    ]
    for k, v in rows:
        typer.echo(f"  {k:<12} {v}")
    for n in p.notes:
        typer.echo(f"  note: {n}")
