#!/usr/bin/env bash
# Container start-up: provision the FID weights from the object store (sha256-checked), then run
# the pod's command (KubeRay's `ray start …`, a RayJob entrypoint, or a shell).
# SYNTHRAY_FID_WEIGHTS=skip leaves them out (pods that never score FID, e.g. MLflow helpers);
# SYNTHRAY_FID_WEIGHTS_SHA256 pins the copy when the store holds more than one.
set -euo pipefail
if [[ "${SYNTHRAY_FID_WEIGHTS:-fetch}" != "skip" ]]; then
  synthray fid-weights --from-store ${SYNTHRAY_FID_WEIGHTS_SHA256:+--sha256 "$SYNTHRAY_FID_WEIGHTS_SHA256"}
fi
exec "$@"
