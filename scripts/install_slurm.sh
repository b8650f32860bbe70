#!/usr/bin/env bash
# Installs what tests/test_cluster.py needs to start a single-node Slurm cluster on this
# machine: Slurm's controller, node daemon and client commands, and munge for their
# authentication (Debian 12: slurm-wlm 22.05, munge 0.5). Needs root and apt-get; CI runs
# it from .ci/run. The test starts and stops the daemons itself (no systemd needed).
set -euo pipefail
PACKAGES=(slurmctld slurmd slurm-client munge)
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
  command -v sbatch >/dev/null && command -v munged >/dev/null; then
  echo "==> [slurm] already installed: $(slurmctld -V)"
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "!! [slurm] installing ${PACKAGES[*]} needs root: sudo bash $0" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "!! [slurm] apt-get not found: install ${PACKAGES[*]} with this system's package manager" >&2
  exit 1
fi
echo "==> [slurm] apt-get install ${PACKAGES[*]}"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
echo "==> [slurm] installed: $(slurmctld -V)"
