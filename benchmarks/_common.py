"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this is importable as `_common`)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: Path, report: dict) -> None:
    """Write ``report`` atomically (a half-written result must never be tabulated by run_all.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)


def require_stack() -> None:
    """Stop with one clear line, not an MLflow or S3 traceback, when the local stack is not ready.

    Raises:
        click.ClickException: a service of ``synthray stack status`` is not ``ready``.
    """
    import click

    from infra.stack import LocalStack

    down = [f"{row['service']} {row['state']}" for row in LocalStack().status() if row["state"] != "ready"]
    if down:
        raise click.ClickException(f"this benchmark needs the local stack ({', '.join(down)}): run `make stack-up`")


def bench_generator(arch: str, name: str):
    """Register an untrained ``arch`` generator as ``name@champion`` (the work per image is what
    matters, not what it draws) and return (``name@champion``, the sampler loaded back from MLflow)."""
    import torch

    from infra.settings import get_settings
    from training.registry.generators import load_generator, log_generator
    from training.nets.presets import get_preset
    from training.nets.sampler import GeneratorSampler

    require_stack()
    settings = get_settings()
    torch.manual_seed(0)
    preset = get_preset(arch)
    gen, _ = preset.build()
    reg = log_generator(GeneratorSampler(gen, preset.latent_dim), name, alias="champion", settings=settings)
    return f"{name}@champion", load_generator(reg.version_uri, settings)


def serve_client(timeout: float = 300):
    """Deploy the Serve app if it is not running; an httpx client with the API key, and the URL."""
    import click
    import httpx

    from infra.settings import get_settings
    from services.serving import deploy as serve
    from services.serving.auth import client_key

    require_stack()
    settings = get_settings()
    url = serve.up(settings, progress=click.echo)
    headers = {"Authorization": f"Bearer {client_key(settings)}"}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout), url, headers


def bench_dataset(n: int, size: int) -> str:
    """``bench-train-SIZE``: n phantom radiographs, published once (later calls resolve it)."""
    from training.catalog.selection import catalog, publish_phantom
    from training.catalog.phantom import PhantomSpec

    require_stack()
    name = f"bench-train-{size}"
    cat = catalog()
    if name in cat.datasets():
        return str(cat.resolve(name))
    return str(publish_phantom(n, PhantomSpec(size=size, seed=11), name=name, progress=lambda _: None).ref)
