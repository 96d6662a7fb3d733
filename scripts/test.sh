#!/usr/bin/env bash
# The test suite (README's test command; .ci/run runs exactly this). With an MPI (installed
# here by scripts/install-mpi.sh when apt-get is usable as root or through sudo) it builds the
# `mpi` feature and so also runs the multi-process tests under `mpirun`; without one it runs
# the same suite without them, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
if scripts/install-mpi.sh; then
  # Open MPI refuses to start as root unless told twice; the tests run mpirun as whoever runs this.
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  cargo test --release --workspace --features lmforge-cli/mpi
else
  echo "test.sh: no MPI could be installed (see above): running the suite without the mpi feature;" \
    "the multi-process tests are skipped" >&2
  cargo test --release --workspace
fi
