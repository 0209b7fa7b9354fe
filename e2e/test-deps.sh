#!/usr/bin/env bash
# What the tests need beyond the Rust toolchain, installed when possible (root with apt-get and
# pip), else named with how to get it. `make test` runs this first.
#   OpenSSH client (mock-rds interop), util-linux (loop devices, blockdev), e2fsprogs and
#   xfsprogs (mkfs, online growth), kubectl (renders deploy/kubernetes), and for the VM tier
#   (the NVMe/TCP data path on a real kernel): virtme-ng, qemu, a static busybox, nvme-cli, kmod,
#   cryptsetup (encrypted volumes) and Debian's kernel, whose modules include the NVMe/TCP
#   target and dm-crypt. For the cluster tier: openssl (its certificates), Go >= 1.26 (builds
#   the pinned Kubernetes components, e2e/cluster), and for its kubelet nodes containerd (with
#   ctr), runc, the CNI plugins, iproute2 and busybox-static (the pods' images).
set -euo pipefail

VIRTME_NG_VERSION=1.42

declare -A package=(
  [ssh]=openssh-client [ssh-keygen]=openssh-client
  [losetup]=util-linux [blockdev]=util-linux [mount]=mount
  [mkfs.ext4]=e2fsprogs [resize2fs]=e2fsprogs
  [mkfs.xfs]=xfsprogs [xfs_growfs]=xfsprogs
  [kubectl]=kubernetes-client
  [qemu-system-x86_64]=qemu-system-x86 [busybox]=busybox-static
  [nvme]=nvme-cli [modprobe]=kmod [cryptsetup]=cryptsetup-bin
  [openssl]=openssl
  [containerd]=containerd [ctr]=containerd [runc]=runc [ip]=iproute2
)

kernel_with_nvmet() {
  local k v
  for k in /boot/vmlinuz-*; do
    [ -e "$k" ] || continue
    v=${k#/boot/vmlinuz-}
    ls /lib/modules/"$v"/kernel/drivers/nvme/target/nvmet-tcp.ko* >/dev/null 2>&1 && return 0
  done
  return 1
}

missing_packages() {
  local cmd
  for cmd in "${!package[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || echo "${package[$cmd]}"
  done | sort -u
  kernel_with_nvmet || echo linux-image-amd64
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || echo containernetworking-plugins
}

mapfile -t apt_missing < <(missing_packages)
vng_missing=0
command -v vng >/dev/null 2>&1 || vng_missing=1

can_install=0
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && can_install=1

if [ ${#apt_missing[@]} -gt 0 ] && [ $can_install = 1 ]; then
  echo "test-deps: installing ${apt_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${apt_missing[@]}"
  mapfile -t apt_missing < <(missing_packages)
fi

if [ $vng_missing = 1 ] && [ $can_install = 1 ] && command -v python3 >/dev/null 2>&1; then
  echo "test-deps: installing virtme-ng $VIRTME_NG_VERSION from PyPI"
  python3 -m pip install -q "virtme-ng==$VIRTME_NG_VERSION"
  if ! command -v vng >/dev/null 2>&1; then
    # pip's scripts directory may not be on PATH (pyenv, ~/.local): make vng reachable.
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    [ -x "$scripts/vng" ] && ln -sf "$scripts/vng" /usr/local/bin/vng
  fi
  command -v vng >/dev/null 2>&1 && vng_missing=0
fi

if [ ${#apt_missing[@]} -gt 0 ] || [ $vng_missing = 1 ]; then
  echo "test-deps: missing, and not installable here (needs root with apt-get and pip):" >&2
  for p in "${apt_missing[@]}"; do echo "  Debian package $p: apt-get install $p" >&2; done
  [ $vng_missing = 1 ] && echo "  virtme-ng: python3 -m pip install virtme-ng==$VIRTME_NG_VERSION" >&2
  exit 1
fi

# Debian's Go is older than the Kubernetes modules need: Go comes with the machine.
go_ok() {
  command -v go >/dev/null 2>&1 || return 1
  local v
  v=$(go env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  [ "$(printf '%s\n1.26\n' "${v%%[!0-9.]*}" | sort -V | head -n1)" = 1.26 ]
}
if ! go_ok; then
  echo "test-deps: missing: Go >= 1.26 in PATH (found: $(command -v go >/dev/null 2>&1 && go env GOVERSION || echo none));" \
    "the cluster tier builds Kubernetes from the Go module proxy with it (e2e/cluster/README.md)" >&2
  exit 1
fi
