#!/usr/bin/env bash
# Create or update the work pools infra/prefect.yaml deploys to, on the Prefect server PREFECT_API_URL names:
#   PREFECT_API_URL=http://localhost:4200/api bash infra/work-pools.sh
# lmops-process: a worker on a machine with the repository checked out (compose's prefect-worker);
# lmops-docker: each flow run in a container of the lmops image (a worker with prefect-docker);
# lmops-k8s: each flow run a Kubernetes job from infra/k8s/work-pool-job-template.json (GPU request included).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://localhost:4200/api}"
PREFECT="${PREFECT:-prefect}"
$PREFECT work-pool create lmops-process --type process --overwrite
$PREFECT work-pool create lmops-docker --type docker --overwrite
$PREFECT work-pool create lmops-k8s --type kubernetes --base-job-template infra/k8s/work-pool-job-template.json --overwrite
