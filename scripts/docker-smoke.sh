#!/usr/bin/env bash
# Build the image and check that the dashboard inside it answers, with nothing mounted.
# Needs a Docker engine (none runs on the project's CI machines):
#   scripts/docker-smoke.sh            # CPU image
#   scripts/docker-smoke.sh cuda       # CUDA image (builds anywhere; runs on the CPU without --gpus)
set -euo pipefail
variant="${1:-cpu}"
tag="mergescope-smoke:${variant}"
name="mergescope-smoke-$$"
cd "$(dirname "$0")/.."

docker build --build-arg TORCH_VARIANT="$variant" -t "$tag" .
docker run -d --rm --name "$name" -p 127.0.0.1:18501:8501 "$tag" >/dev/null
trap 'docker stop "$name" >/dev/null 2>&1 || true' EXIT

for _ in $(seq 1 90); do
  if [ "$(curl -fsS http://127.0.0.1:18501/_stcore/health 2>/dev/null)" = "ok" ]; then break; fi
  sleep 2
done
[ "$(curl -fsS http://127.0.0.1:18501/_stcore/health)" = "ok" ] || { docker logs "$name"; echo "health check failed" >&2; exit 1; }
[ "$(docker inspect --format '{{.Config.User}}' "$tag")" = "mergescope" ] || { echo "image runs as root" >&2; exit 1; }
docker exec "$name" python -m engine zoo verify
docker exec "$name" python -m engine checkpoints | grep -q expert-en-es || { echo "the zoo is not discovered" >&2; exit 1; }
echo "smoke test passed: $tag"
