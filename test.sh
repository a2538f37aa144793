#!/usr/bin/env bash
# The course's whole test suite, as CI runs it: installs the system tools
# the tests need when they are missing, then builds and tests everything.
#   ./test.sh            everything
#   ./test.sh e2e        only tests whose name matches "e2e" (cargo test filter)
set -euo pipefail
cd "$(dirname "$0")"

# System tools some tests drive (a test fails, never skips, without them).
needed_packages=()
command -v socat >/dev/null 2>&1 || needed_packages+=(socat)
command -v siege >/dev/null 2>&1 || needed_packages+=(siege)
command -v tmux >/dev/null 2>&1 || needed_packages+=(tmux)
command -v valgrind >/dev/null 2>&1 || needed_packages+=(valgrind)
if ((${#needed_packages[@]})); then
  echo "test.sh: installing ${needed_packages[*]} (apt-get)"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed_packages[@]}" >/dev/null
fi

# cargo-mutants, pinned: `checker mutants` drives it, and a test runs one mutant.
if ! cargo mutants --version 2>/dev/null | grep -q '^cargo-mutants 27\.1\.0$'; then
  echo "test.sh: installing cargo-mutants 27.1.0 (cargo install)"
  cargo install cargo-mutants --version 27.1.0 --locked --quiet
fi

# Many sockets at once: use the hard limit of open files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo fmt --all --check
cargo build --workspace --locked --all-targets
cargo clippy --locked -- -D warnings
cargo test --locked "$@"
