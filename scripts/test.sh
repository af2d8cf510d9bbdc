#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with a Rust toolchain:
# installs what the tests need (coturn's test clients, iproute2, nftables,
# Chromium, ...) and runs every test. Nothing is skipped when run as root
# (the network-namespace tests need root; .ci/run runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use:
#   coturn          turnutils_stunclient / turnutils_uclient / turnutils_peer, turnserver (interop)
#   iproute2        ip netns, veth (NAT labs)
#   nftables        nft (NAT labs)
#   chromium        a real WebRTC client (browser test)
#   systemd         systemd-analyze verify (unit file test)
#   procps, psmisc  ps/pkill used by cleanup paths
#   python3-venv, python3-pip  a venv for kubernetes-validate (Kubernetes
#                   manifest schemas; Debian's pip refuses system-wide installs)
#   busybox         runs deploy/kubernetes' render.sh as its busybox init container does
#   clang, libbpf-dev, bpftool, ethtool  the XDP fast path (issue 15): build and lab
packages=(coturn iproute2 nftables chromium systemd procps psmisc ca-certificates
  python3-venv python3-pip busybox
  # issue 15, the XDP fast path: clang + libbpf-dev build the program (so CI
  # always builds and tests it), bpftool and ethtool set up its lab
  clang libbpf-dev bpftool ethtool)
# Issue 14 (fleet): redis-server, the real Redis of tests/cluster.rs.
packages+=(redis-server)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing test prerequisites: ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo_cmd=(sudo); else
      echo "error: need root or sudo to install: ${missing[*]}" >&2; exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts coturn's own server on install; it would hold port 3478.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl disable --now coturn >/dev/null 2>&1 || true
  fi
fi

if [ "$(id -u)" -eq 0 ]; then
  # As root nothing may skip: the namespace tests fail instead of skipping
  # if they cannot build their labs.
  export TURNPIKE_NETNS_REQUIRED=1
else
  cat >&2 <<'MSG'
############################################################################
# NOTE: not running as root. The network-namespace tests (NAT labs, the
# browser test) will print SKIPPED. Run as root (CI does) to run them all.
############################################################################
MSG
fi

# kubernetes-validate, pinned, in a venv under target/ (tests/kubernetes_manifests.rs
# validates deploy/kubernetes with it). Installed once; kept while the
# version matches.
k8s_validate_version=1.37.0
k8s_venv=target/k8s-venv
if [ "$("$k8s_venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$k8s_validate_version" ]; then
  echo "installing kubernetes-validate $k8s_validate_version into $k8s_venv"
  rm -rf "$k8s_venv"
  python3 -m venv "$k8s_venv"
  "$k8s_venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$k8s_validate_version"
fi
TURNPIKE_K8S_VALIDATE="$(pwd)/$k8s_venv/bin/kubernetes-validate"
export TURNPIKE_K8S_VALIDATE

# Many allocations in the soak test need file descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo test --workspace --all-targets "$@"
# The examples in the API docs compile and run too.
cargo test --workspace --doc
