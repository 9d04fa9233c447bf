#!/usr/bin/env bash
# Debian packages the DFT and cluster tests use: Quantum ESPRESSO (pw.x + bundled pseudopotentials) and a
# single-node SLURM reached over SSH. Installs only what is missing; the tests skip with a reason without them.
set -u
missing=()
command -v pw.x >/dev/null || missing+=(quantum-espresso quantum-espresso-data)
command -v slurmctld >/dev/null || missing+=(slurm-wlm)
command -v munged >/dev/null || missing+=(munge)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
