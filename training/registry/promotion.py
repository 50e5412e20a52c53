"""Gated promotion of registered generators: ``challenger`` → ``champion``, and rollback.

Gates (each configurable, each reported with its number):

1. **fid**: FID at most ``max_fid``, *or* lower than the current champion's FID on the same
   reference key (same real images, same n, same Inception weights). With neither a threshold
   nor a comparable champion there is nothing to judge against, and the gate fails.
2. **memorization**: the fraction of synthetic images closer to a training image than the
   real→real 1st percentile is at most ``max_memorized_fraction``.
3. **determinism**: the version loads from the registry and ``generate(n, seed)`` twice gives
   byte-identical images.
4. **membership**: the registration's membership-inference audit (:mod:`training.evaluate.membership`,
   worst of its attacks) fails the gate when its AUC is above ``max_mia_auc`` (default 0.6) *and*
   its bootstrap CI lies above 0.5 (the leak is real, not noise). Registration audits are small
   (tens of held-out patients, AUC standard error ~0.07), so an untrained generator's AUC lands
   above 0.6 by chance about one time in five; a planted copier scores ~1.0 with a CI far from
   0.5. A version without an audit (registered before it existed, or on a dataset without
   held-out patients) fails, with the reason.

Gates 1, 2 and 4 read the tags written at registration (versions never change afterwards); the
third runs the model. A failed gate refuses the promotion unless ``force`` with a ``reason``,
which is recorded. Moving ``champion`` is a single alias update on the server, so readers see
the old or the new version, never neither; the old champion first gets ``previous-champion``,
which makes :func:`rollback` one command. Every promotion and rollback is also recorded as a
registered-model tag (``promotion.vN`` / ``rollback.vN``) visible in the MLflow UI.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

from pydantic import BaseModel, Field

from infra.settings import Settings, get_settings
from infra.tracking import configure
from training.evaluate import better
from training.registry.refs import version_uri
from training.registry.generators import (
    CHAMPION,
    PREVIOUS_CHAMPION,
    RegistryError,
    load_generator,
    resolve_version,
    version_by_alias,
)


class PromotionGates(BaseModel):
    """Thresholds of the promotion gates."""

    max_fid: float | None = Field(None, gt=0, description="FID at or below this passes gate 1")
    beat_champion: bool = Field(True, description="gate 1 also passes when FID beats the champion's on the same reference")
    max_memorized_fraction: float = Field(0.05, ge=0, le=1, description="gate 2 threshold")
    determinism_n: int = Field(8, ge=1, le=1024, description="images generated twice by gate 3")
    max_mia_auc: float = Field(0.6, ge=0.5, le=1, description="gate 4: largest membership-inference AUC")
    determinism_seed: int = Field(1234, ge=0)


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: str
    threshold: str
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name:<13} {self.value:<22} {self.threshold:<34} {self.detail}"


@dataclass(frozen=True)
class PromotionReport:
    name: str
    version: str
    gates: list[GateResult]
    promoted: bool
    forced: bool = False
    reason: str | None = None
    previous: str | None = None
    note: str = ""
    failures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = f"{'':4}  {'gate':<13} {'value':<22} {'threshold':<34} detail"
        return [head, *(g.line() for g in self.gates)]


def _fid_gate(client, version, gates: PromotionGates) -> GateResult:
    tags = version.tags
    fid, key = float(tags["fid"]), tags["fid.reference_key"]
    value = f"FID {fid:.3f} (n={tags['fid.n_real']})"
    champion = version_by_alias(client, version.name, CHAMPION) if gates.beat_champion else None
    comparable = champion is not None and champion.version != version.version and \
        champion.tags.get("fid.reference_key") == key
    passes, wants = [], []
    if gates.max_fid is not None:
        passes.append(fid <= gates.max_fid)
        wants.append(f"<= {gates.max_fid:g}")
    if comparable:
        champion_fid = float(champion.tags["fid"])
        passes.append(better("fid", fid, champion_fid))
        wants.append(f"< champion v{champion.version} {champion_fid:.3f}")
    if not wants:
        why = ("champion comparison is off" if not gates.beat_champion else "there is no champion yet"
               if champion is None else f"champion v{champion.version} was scored on another reference")
        return GateResult("fid", False, value, "(nothing to compare with)", f"{why}; set --max-fid")
    return GateResult("fid", any(passes), value, " or ".join(wants), f"reference {key.rsplit('/', 1)[-1][:16]}…")


def _memorization_gate(version, gates: PromotionGates) -> GateResult:
    fraction = float(version.tags["memorization.fraction_below_real_p1"])
    n_below, n = version.tags["memorization.n_below_real_p1"], version.tags["memorization.n_fake"]
    return GateResult("memorization", fraction <= gates.max_memorized_fraction, f"{fraction:.3f} ({n_below}/{n})",
                      f"<= {gates.max_memorized_fraction:g}", "closer than real→real p1")


def _determinism_gate(version, gates: PromotionGates, settings: Settings) -> GateResult:
    uri = version_uri(version.name, version.version)
    try:
        generator = load_generator(uri, settings)
        first = generator.generate(gates.determinism_n, seed=gates.determinism_seed)
        second = generator.generate(gates.determinism_n, seed=gates.determinism_seed)
    except Exception as exc:  # any load/generate failure is this gate's finding, not a crash
        return GateResult("determinism", False, "load/generate failed", "identical bytes", str(exc).splitlines()[0])
    a, b = hashlib.sha256(first.tobytes()).hexdigest(), hashlib.sha256(second.tobytes()).hexdigest()
    return GateResult("determinism", a == b, f"sha256 {a[:12]}…", "identical bytes twice",
                      f"{gates.determinism_n} images, seed {gates.determinism_seed}" + ("" if a == b else f", then {b[:12]}…"))


def _membership_gate(version, gates: PromotionGates) -> GateResult:
    tags = version.tags
    if "mia.auc" not in tags:
        why = tags.get("mia.skipped") or "no membership audit on this version (registered before it existed)"
        return GateResult("membership", False, "no audit", f"AUC <= {gates.max_mia_auc:g}", why)
    auc, low = float(tags["mia.auc"]), float(tags["mia.auc_ci_low"])
    return GateResult("membership", auc <= gates.max_mia_auc or low <= 0.5,
                      f"AUC {auc:.3f} ({tags.get('mia.attack', '?')})", f"<= {gates.max_mia_auc:g} or CI low <= 0.5",
                      f"CI [{float(tags['mia.auc_ci_low']):.2f}, {float(tags['mia.auc_ci_high']):.2f}], "
                      f"TPR@1%FPR {float(tags['mia.tpr_at_1pct_fpr']):.2f}")


def check_gates(client, version, gates: PromotionGates, settings: Settings) -> list[GateResult]:
    """All four gates for one version."""
    missing = [k for k in ("fid", "fid.reference_key", "memorization.fraction_below_real_p1") if k not in version.tags]
    if missing:
        raise RegistryError(f"{version.name} v{version.version} lacks tags {missing}: register it with "
                            "`synthray registry register` (or `train gan --register`)")
    return [_fid_gate(client, version, gates), _memorization_gate(version, gates),
            _determinism_gate(version, gates, settings), _membership_gate(version, gates)]


def _record(client, name: str, key: str, event: dict) -> None:
    client.set_registered_model_tag(name, key, json.dumps(event, sort_keys=True))


def promote(
    name: str,
    *,
    version: str | None = None,
    from_alias: str | None = None,
    gates: PromotionGates | None = None,
    force: bool = False,
    reason: str | None = None,
    settings: Settings | None = None,
) -> PromotionReport:
    """Check the gates for ``name`` ``version`` (or the version behind ``from_alias``) and move ``champion``.

    Raises:
        RegistryError: unknown name/version/alias, or ``force`` without ``reason``.
    """
    if (version is None) == (from_alias is None):
        raise RegistryError("give exactly one of --version V or --from ALIAS")
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason TEXT, which is recorded on the registered model")
    settings = settings or get_settings()
    gates = gates or PromotionGates()
    client = configure(settings).MlflowClient()
    candidate = resolve_version(client, f"{name}/{version}" if version else f"{name}@{from_alias}")
    current = version_by_alias(client, name, CHAMPION)
    if current is not None and current.version == candidate.version:
        return PromotionReport(name, candidate.version, [], promoted=False, previous=current.version,
                               note=f"v{candidate.version} is already the champion; nothing to do")
    results = check_gates(client, candidate, gates, settings)
    failures = [g.name for g in results if not g.passed]
    if failures and not force:
        return PromotionReport(name, candidate.version, results, promoted=False, failures=failures,
                               previous=current.version if current else None,
                               note=f"refused: gate(s) {', '.join(failures)} failed")
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, current.version)
    client.set_registered_model_alias(name, CHAMPION, candidate.version)  # the one atomic switch
    event = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from": current.version if current else None,
             "gates": [asdict(g) for g in results], "forced": bool(failures), "reason": reason if failures else None}
    _record(client, name, f"promotion.v{candidate.version}", event)
    if failures:
        client.set_registered_model_tag(name, f"promotion.v{candidate.version}.forced_reason", reason)
    return PromotionReport(name, candidate.version, results, promoted=True, forced=bool(failures),
                           reason=reason if failures else None, previous=current.version if current else None,
                           failures=failures,
                           note=f"champion → v{candidate.version}" + (f" (forced: {reason})" if failures else ""))


def rollback(name: str, settings: Settings | None = None) -> tuple[str, str]:
    """Swap ``champion`` and ``previous-champion``; returns (from version, to version)."""
    client = configure(settings or get_settings()).MlflowClient()
    previous = version_by_alias(client, name, PREVIOUS_CHAMPION)
    current = version_by_alias(client, name, CHAMPION)
    if previous is None:
        raise RegistryError(f"{name} has no {PREVIOUS_CHAMPION} alias to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, current.version)
    _record(client, name, f"rollback.v{previous.version}",
            {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from": current.version if current else None})
    return (current.version if current else "-"), previous.version


__all__ = ["GateResult", "PromotionGates", "PromotionReport", "check_gates", "promote", "rollback"]
