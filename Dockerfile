# syntax=docker/dockerfile:1
#
# rds-csi container image: one binary for both roles; the manifests pick the role with
# `serve --controller` (Deployment) or `serve --node` (DaemonSet).
#
#   docker build -t ghcr.io/srvlab/rds-csi:0.1.0 .
#
# Keep the tag in step with deploy/kubernetes/kustomization.yaml and deploy/helm/rds-csi
# (driver/tests/deploy.rs checks the two agree).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# The whole workspace is copied: cargo needs every member's manifest (and the driver's path
# dev-dependency on mock-rds) to resolve Cargo.lock, even when building one package.
COPY . .
# The cache mounts keep the registry and incremental state between builds; the binary is copied
# out of the cached target dir because that mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p rds-csi --bin rds-csi \
    && install -D -m 0755 target/release/rds-csi /out/rds-csi

FROM ${RUNTIME_IMAGE}
# What the node plugin runs on the host's devices:
#   nvme-cli       `nvme connect/disconnect` for NVMe/TCP
#   e2fsprogs      mkfs.ext4/ext3, resize2fs, e2fsck
#   xfsprogs       mkfs.xfs, xfs_growfs
#   util-linux     blkid (refuse to format a device that already holds data), blockdev
#                  (read-only volumes: the device read-only flag)
#   mount          mount, umount, losetup (also in bookworm-slim; listed so it cannot go away)
#   cryptsetup-bin cryptsetup (encrypted volumes: LUKS2 format, open, close, resize)
#   kmod           modprobe nvme-tcp when the host has not loaded it (host /lib/modules is mounted)
#   ca-certificates for any TLS the controller does (Kubernetes API)
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates \
        cryptsetup-bin \
        e2fsprogs \
        kmod \
        mount \
        nvme-cli \
        util-linux \
        xfsprogs \
    && rm -rf /var/lib/apt/lists/* \
    # The image must not carry a host NQN/ID: every node would then share one identity
    # (democratic-csi#451). The node mounts the host's /etc/nvme instead.
    && rm -f /etc/nvme/hostnqn /etc/nvme/hostid

COPY --from=builder /out/rds-csi /usr/local/bin/rds-csi

LABEL org.opencontainers.image.title="rds-csi" \
      org.opencontainers.image.description="Kubernetes CSI driver for the MikroTik ROSE Data Server (NVMe/TCP)" \
      org.opencontainers.image.source="https://github.com/srvlab/rds-csi" \
      org.opencontainers.image.licenses="Apache-2.0"

# Runs as root: the node plugin formats, mounts and connects NVMe devices. The controller's
# containers drop every capability and run on a read-only root filesystem instead.
ENTRYPOINT ["/usr/local/bin/rds-csi"]
CMD ["serve", "--help"]
