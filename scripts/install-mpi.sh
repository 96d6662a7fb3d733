#!/usr/bin/env bash
# Installs the system MPI that `--features mpi` builds against: Open MPI (runtime, `mpirun`,
# headers, `mpicc` for build-probe-mpi) and libclang (the `mpi-sys` crate generates its bindings
# with bindgen). Debian / Ubuntu (apt-get) only. Idempotent: exits at once when everything is
# there. Runs as root, or through sudo otherwise. Exit status 0 = installed (or already there).
set -euo pipefail

have_all() {
  command -v mpirun >/dev/null && command -v mpicc >/dev/null \
    && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1
}
if have_all; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-mpi.sh: no apt-get here; install Open MPI (or MPICH) with its headers and libclang by hand" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "install-mpi.sh: not root and no password-less sudo; cannot install Open MPI" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev libclang-dev clang pkg-config >/dev/null
have_all
