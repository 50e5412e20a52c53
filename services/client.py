"""HTTP client of the synthesis API, as a data team uses it (``synthray generate``).

Small sets go through ``POST /v1/synthesize`` and land as PNGs plus ``manifest.json``;
sets above the server's synchronous cap (read from ``/healthz``) become a batch job whose
progress is shown while it runs and whose shards are then fetched through their presigned
URLs. Files are written to a temporary name and renamed, so an interrupted download never
leaves a half-written file that looks complete.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from infra.settings import Settings
from services.serving.auth import client_key
from services.serving.deploy import base_url
from infra.errors import SynthrayError
from infra.names import confined
from infra.progress import bar

Echo = Callable[[str], None]


class ApiError(SynthrayError):
    """A non-2xx answer, with the server's own message (which names the bad field)."""


@dataclass
class GenerateResult:
    out_dir: Path
    files: list[Path]
    headers: dict[str, str]
    batch_id: str | None = None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text
    if isinstance(detail, list):  # FastAPI validation errors: name each field
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}" for e in detail)
    return str(detail)


def _shards_to_dicom(shards: list[Path], directory: Path, echo: Echo) -> list[Path]:
    """Each batch shard (npz with its manifest) as Secondary Capture files under ``directory``."""
    from services.serving.packaging import read_images, read_manifest
    from training.catalog.dicom_export import write_synthetic

    files: list[Path] = []
    for shard in sorted(shards):
        data = shard.read_bytes()
        meta = read_manifest(data)["generator"]
        files += write_synthetic(read_images(data), meta, directory / shard.stem, seed_index=shard.stem,
                                 start=int(meta.get("offset") or 0))
    echo(f"{len(files)} DICOM files → {directory}")
    return files


def _write(path: Path, data: bytes) -> Path:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


class ApiClient:
    """Args:
    url: base URL (defaults to the local Serve address from settings).
    api_key: bearer key (defaults to the first configured key / the local key file).
    timeout_s: per-request timeout.
    """

    def __init__(self, settings: Settings, url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 300.0) -> None:
        key = api_key or client_key(settings)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url or base_url(settings), headers=headers, timeout=timeout_s)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(f"synthray API at {self.http.base_url} unreachable ({exc}); is it up? synthray serve up") from None
        if response.is_error:
            raise ApiError(f"{method} {path} → {response.status_code}: {_detail(response)}")
        return response

    def max_sync_images(self) -> int:
        return int(self.request("GET", "/healthz").json()["max_sync_images"])

    def generate(self, model: str, n: int, seed: int, out_dir: Path, cls: str | None = None,
                 echo: Echo = print, poll_s: float = 2.0, fmt: str = "png",
                 labels: list[int] | None = None, filter: str | None = None) -> GenerateResult:
        """``n`` images into ``out_dir``: synchronous when small enough, else a batch job.

        ``filter`` (``none``/``near-copy``; None = the model's default) is sent as the request's
        ``filter``; the near-copy rejections are echoed (header or batch manifest).

        ``fmt`` ``png`` writes PNGs, ``dicom`` DICOM Secondary Capture files (ConversionType
        SYN): the server packs them (``format=dicom-zip``) for a synchronous request; a batch's
        npz shards are converted here, each into ``dicom/<shard>/img-NNNNN.dcm``.
        """
        if fmt not in ("png", "dicom"):
            raise ApiError(f"format {fmt!r} is not png or dicom")
        out_dir.mkdir(parents=True, exist_ok=True)
        if n <= self.max_sync_images():
            body = {"model": model, "n": n, "seed": seed, "format": "dicom-zip" if fmt == "dicom" else "png-zip"} | (
                {"class": cls} if cls else {}) | ({"labels": labels} if labels is not None else {}) | (
                {"filter": filter} if filter else {})
            response = self.request("POST", "/v1/synthesize", json=body)
            if "x-near-copy-rejected" in response.headers:
                echo(f"near-copy filter: {response.headers['x-near-copy-rejected']} near copies rejected and replaced")
            with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
                files = [_write(confined(out_dir, name), zf.read(name)) for name in zf.namelist()]  # no zip-slip
            masks = sum(f.name.startswith("mask-") for f in files)  # an image + mask generator's label maps
            echo(f"{n} images{f' and {masks} masks' if masks else ''} from {response.headers['x-model-name']} "
                 f"v{response.headers['x-model-version']} (seed {seed}) → {out_dir}")
            return GenerateResult(out_dir, files, dict(response.headers))
        if cls:
            raise ApiError("--class with more images than one synchronous request: use a batch with per_class")
        if labels is not None:
            raise ApiError("--labels with more images than one synchronous request: ask in several requests")
        result = self._batch(model, n, seed, out_dir, echo, poll_s, filter)
        if fmt == "dicom":
            result.files += _shards_to_dicom([f for f in result.files if f.suffix == ".npz"], out_dir / "dicom", echo)
        return result

    def _batch(self, model: str, n: int, seed: int, out_dir: Path, echo: Echo, poll_s: float,
               filter: str | None = None) -> GenerateResult:
        body = {"model": model, "n": n, "seed": seed} | ({"filter": filter} if filter else {})
        state = self.request("POST", "/v1/batches", json=body).json()
        batch_id = state["batch_id"]
        echo(f"batch {batch_id} submitted ({n} images)")
        with bar(f"batch {batch_id}", total=n, unit="img") as shown:
            while state["state"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(poll_s)
                state = self.request("GET", f"/v1/batches/{batch_id}").json()
                progress = state.get("progress") or {}
                shown.update(progress.get("images_done", 0), progress.get("images_total", n),
                             f"{state['state']}, {progress.get('images_per_s', 0)} img/s")
        if state["state"] != "succeeded":
            raise ApiError(f"batch {batch_id} {state['state']}: {state.get('error') or ''}")
        urls = state["urls"]
        files = []
        with httpx.Client(timeout=self.http.timeout) as plain, \
                bar(f"batch {batch_id}: download", total=1 + len(urls["shards"]), unit="file") as shown:
            for url in [urls["manifest"], *urls["shards"]]:  # presigned URLs carry their own auth
                response = plain.get(url)
                response.raise_for_status()
                name = httpx.URL(url).path.rsplit("/", 1)[-1]
                files.append(_write(confined(out_dir, name), response.content))
                shown.advance()
                if url == urls["manifest"] and "near_copy_rejected" in (found := response.json()):
                    echo(f"near-copy filter: {found['near_copy_rejected']} near copies rejected and replaced")
        echo(f"batch {batch_id}: {len(files)} files → {out_dir}")
        return GenerateResult(out_dir, files, {}, batch_id)
