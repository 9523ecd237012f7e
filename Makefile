# nix-snapshotter developer entry points. All state lives under ./build
# (git-ignored): `make clean` resets everything.
#
#   make demo     set up, start containerd + nix-snapshotter, build and run
#                 the hello and redis nix images, stop (the README quick start)
#   make test     set up and run the whole test suite
#   make bench    run the benchmarks and write docs/performance.md
#
# CONTAINERD=1.7|2 picks the containerd line (2: build/containerd-2, from
# Debian sid, never installed); `make test` runs both unless it is set.
# RUNTIME=runsc runs run-hello, run-redis and demo under gVisor.
#
# The development environment is devenv/ (devenv/main.ts runs these
# targets). As root it is rootful; as an ordinary user it is
# rootless (docs/rootless.md): both daemons run in a rootlesskit namespace,
# which `make nsenter ARGS="sh"` enters.

SHELL := /bin/bash
# Nix settings for the project's Nix calls, without touching /etc/nix/nix.conf
# (scripts/nix-conf/nix.conf includes it).
export NIX_CONF_DIR := $(CURDIR)/scripts/nix-conf
NODE  ?= node
BUILD := build
DEV   := $(NODE) $(BUILD)/devenv/main.js

.PHONY: all setup build test demo run-hello run-redis start-containerd \
        start-nix-snapshotter stop clean bench nsenter

all: build

# Installs system packages (apt) and npm dependencies when missing.
setup:
	@bash scripts/setup.sh

$(BUILD)/.stamp: $(shell find src devenv test bench -name '*.ts' 2>/dev/null) tsconfig.json package.json
	@npx tsc -p tsconfig.json
	@chmod +x $(BUILD)/src/cli/*.js
	@touch $@

build: setup $(BUILD)/.stamp

test: build
	@bash scripts/run-tests.sh

start-containerd: build
	@$(DEV) start-containerd

start-nix-snapshotter: build
	@$(DEV) start-nix-snapshotter

stop:
	@if [ -f $(BUILD)/devenv/main.js ]; then $(DEV) stop; fi

run-hello: build
	@$(DEV) run-hello

run-redis: build
	@$(DEV) run-redis

demo: build
	@$(DEV) demo

# A command in the environment's namespaces (rootless), e.g. ARGS="sh" or
# ARGS="ctr images ls"; CONTAINERD_ADDRESS points at its containerd.
nsenter: build
	@$(DEV) nsenter $(ARGS)

bench: build
	@bash bench/run.sh

# Rootless, container files belong to the user's subordinate ids: only
# inside a user namespace mapping them can the user delete them.
clean: stop
	@if [ -d $(BUILD) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    grep -o " $(CURDIR)/$(BUILD)[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true; \
	    rm -rf $(BUILD); \
	  else \
	    rootlesskit rm -rf $(BUILD) 2>/dev/null || rm -rf $(BUILD); \
	  fi; \
	fi
