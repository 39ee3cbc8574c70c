# syntax=docker/dockerfile:1
# The node image: `meshlane` (agent, CLI, CNI installer) and `meshlane-cni`
# (the CNI plugin the installer copies to the node). `make image` builds it
# with docker or podman; `make node-build` runs the builder's cargo command
# on the host (CI does), so the binaries are checked where no engine runs.

# Builder: Rust plus what build.rs needs to compile the BPF C into objects
# and skeletons (clang, llvm; libelf and zlib headers for libbpf-sys's
# vendored libbpf). The BPF objects are embedded in the binary.
FROM docker.io/library/rust:1.95-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang llvm libelf-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Release, locked, without the simulated node (feature `sim`): no lab code.
RUN cargo build --release --locked --no-default-features --bins \
 && install -D -m 0755 -t /out target/release/meshlane target/release/meshlane-cni

# Runtime: Debian slim with the one shared library the binaries need beyond
# libc and zlib (libelf, for libbpf); `sh` and `sleep` serve the chart's
# uninstall guard and cleanup pods. No compiler, no bpftool: nothing is
# compiled or shelled out to on the node.
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libelf1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/meshlane /out/meshlane-cni /usr/local/bin/
COPY LICENSE /usr/share/doc/meshlane/LICENSE
COPY LICENSES/ /usr/share/doc/meshlane/LICENSES/
LABEL org.opencontainers.image.title="meshlane" \
      org.opencontainers.image.description="eBPF add-on for sidecar service meshes: node agent and CNI plugin" \
      org.opencontainers.image.licenses="Apache-2.0 AND (GPL-2.0-only OR BSD-2-Clause)"
CMD ["meshlane", "agent", "--config", "/etc/meshlane/agent.yaml"]
