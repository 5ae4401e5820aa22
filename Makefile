# Two commands (see README.md):
#   make run   - a local 3-member etcd cluster with the proxy in front, on http://127.0.0.1:8080
#   make test  - the whole test suite
#   make bench - bench/spread.py and bench/throughput.py with default options (bench/README.md)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test venv etcd wrk bench readme-flags clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# etcd 3.4/3.5 with the v2 API (3.6 removed it). Debian/Ubuntu: etcd-server + etcd-client.
etcd:
	@if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing etcd-server and etcd-client with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null; \
	else \
		echo "etcd not found: install etcd 3.4 or 3.5 (etcd and etcdctl on PATH), e.g. 'apt-get install etcd-server etcd-client'"; exit 1; \
	fi

# wrk: the load generator of the overload test and the benchmarks.
wrk:
	@command -v wrk >/dev/null 2>&1 && exit 0; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing wrk with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	else \
		echo "wrk not found: install it, e.g. 'apt-get install wrk'"; exit 1; \
	fi

run: venv etcd
	$(PY) -m geproxy.testing

test: venv etcd wrk
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks; extra options via SPREAD_ARGS / THROUGHPUT_ARGS, e.g.
#   make bench SPREAD_ARGS=--compare-go THROUGHPUT_ARGS="--rounds 7"
bench: venv etcd wrk
	$(PY) bench/spread.py $(SPREAD_ARGS)
	$(PY) bench/throughput.py $(THROUGHPUT_ARGS)

readme-flags: venv
	$(PY) -m geproxy.settings --markdown

clean:
	rm -rf $(VENV) *.egg-info
