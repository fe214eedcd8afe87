# Kindling: the entry points of the README, on a fresh Debian 12 machine as root.
#   make demo   build the default images, boot a VM that runs a command, print its boot timeline
#   make test   run the whole test suite (host tests and real VMs under TCG)
#   make bench  the issue-7 benchmarks (figures, not assertions; JSON in build/bench/)
#   make bench-smoke  each benchmark once with one iteration (CI: they must not fail)
#
# On the development machines nested KVM exists but is unusably slow, so the demo and the
# tests force TCG.  The `kindling` CLI itself defaults to --accel auto (KVM when it works).

PYTHON     ?= /usr/bin/python3
VENV       := .venv
ACCEL      ?= tcg
APT_PACKAGES := python3 python3-venv python3.11 libudev1 qemu-system-x86 erofs-utils \
                skopeo umoci docker-registry nfs-ganesha nfs-ganesha-vfs \
                e2fsprogs kmod iproute2 lz4 zstd systemd mmdebstrap binutils \
                openssl apache2-utils

.PHONY: demo test bench bench-smoke deps apt venv clean

demo: deps
	$(VENV)/bin/kindling run --accel $(ACCEL) -- sh -c 'echo "hello from $$(uname -sr) in a Kindling VM"'

test: deps
	$(VENV)/bin/python -m pytest -v -rs

BENCH_OUT := build/bench

bench: deps
	mkdir -p $(BENCH_OUT)
	$(VENV)/bin/python bench/create_running.py --runs 5 --json $(BENCH_OUT)/create_running.json
	$(VENV)/bin/python bench/agent_vs_qga.py --json $(BENCH_OUT)/agent_vs_qga.json
	$(VENV)/bin/python bench/footprint.py --runs 3 --json $(BENCH_OUT)/footprint.json
	$(VENV)/bin/python bench/scale.py --vms 8 --json $(BENCH_OUT)/scale.json
	$(VENV)/bin/python bench/standby.py --iterations 5 --json $(BENCH_OUT)/standby.json
	$(VENV)/bin/python bench/api_scale.py --vms 16 --json $(BENCH_OUT)/api_scale.json
	$(VENV)/bin/python bench/template_memory.py --guests 8 --json $(BENCH_OUT)/template_memory.json
	$(VENV)/bin/python bench/kmod_load.py --runs 3 --json $(BENCH_OUT)/kmod_load.json

# create_running.py and agent_vs_qga.py get their one-iteration smoke runs inside `make test`
# (tests/test_bench_*.py also check that every figure is reported); the others run here.
bench-smoke: deps
	mkdir -p $(BENCH_OUT)
	$(VENV)/bin/python bench/footprint.py --runs 1 --json $(BENCH_OUT)/smoke-footprint.json
	$(VENV)/bin/python bench/scale.py --vms 2 --runs 1 --json $(BENCH_OUT)/smoke-scale.json
	$(VENV)/bin/python bench/oci.py --iterations 1 --json $(BENCH_OUT)/smoke-oci.json
	$(VENV)/bin/python bench/standby.py --iterations 1 --json $(BENCH_OUT)/smoke-standby.json
	$(VENV)/bin/python bench/api_scale.py --vms 1 --json $(BENCH_OUT)/smoke-api_scale.json
	$(VENV)/bin/python bench/template_memory.py --guests 1 --json $(BENCH_OUT)/smoke-template_memory.json
	$(VENV)/bin/python bench/kmod_load.py --runs 1 --json $(BENCH_OUT)/smoke-kmod_load.json

deps: apt venv

apt: .cache/apt.stamp
.cache/apt.stamp: Makefile
	mkdir -p .cache
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml .cache/apt.stamp
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .cache build
