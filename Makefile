# nix-snapshotter developer entry points. All state lives under ./build
# (git-ignored): `make clean` resets everything.
#
#   make demo     set up, start containerd + nix-snapshotter, build and run
#                 the hello and redis nix images, stop (the README quick start)
#   make test     set up and run the whole test suite
#   make bench    run the benchmarks and write docs/performance.md

SHELL := /bin/bash
NODE  ?= node
BUILD := build
DEV   := $(NODE) $(BUILD)/test/lib/devenv.js

.PHONY: all setup build test demo run-hello run-redis start-containerd \
        start-nix-snapshotter stop clean bench

all: build

# Installs system packages (apt) and npm dependencies when missing.
setup:
	@bash scripts/setup.sh

$(BUILD)/.stamp: $(shell find src test bench -name '*.ts' 2>/dev/null) tsconfig.json package.json
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
	@if [ -f $(BUILD)/test/lib/devenv.js ]; then $(DEV) stop; fi

run-hello: build
	@$(DEV) run-hello

run-redis: build
	@$(DEV) run-redis

demo: build
	@$(DEV) demo

bench: build
	@bash bench/run.sh

clean: stop
	@if [ -d $(BUILD) ]; then \
	  grep -o " $(CURDIR)/$(BUILD)[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true; \
	  rm -rf $(BUILD); \
	fi
