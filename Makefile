# Kindling: the entry points of the README, on a fresh Debian 12 machine as root.
#   make demo   build the default images, boot a VM that runs a command, print its boot timeline
#   make test   run the whole test suite (host tests and real VMs under TCG)
#   make bench  the boot and stage benchmarks (bench/boot.py, bench/stages.py; figures, not assertions)
#
# On the development machines nested KVM exists but is unusably slow, so the demo and the
# tests force TCG.  The `kindling` CLI itself defaults to --accel auto (KVM when it works).

PYTHON     ?= /usr/bin/python3
VENV       := .venv
ACCEL      ?= tcg
APT_PACKAGES := python3 python3-venv python3.11 libudev1 qemu-system-x86 erofs-utils \
                e2fsprogs kmod iproute2 lz4 zstd systemd mmdebstrap binutils

.PHONY: demo test bench deps apt venv clean

demo: deps
	$(VENV)/bin/kindling run --accel $(ACCEL) -- sh -c 'echo "hello from $$(uname -sr) in a Kindling VM"'

test: deps
	$(VENV)/bin/python -m pytest -v -rs

bench: deps
	$(VENV)/bin/python bench/boot.py
	$(VENV)/bin/python bench/stages.py

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
