# criu-macvlan: developer entry points. Every target runs as root on Debian 12.
PY      := .venv/bin/python
PYTEST  := .venv/bin/pytest

.PHONY: setup test unit lint demo proto bench bench-quick bench-runc fuzz soak clean zdtm zdtm-harm

setup:                      ## install criu 4.1.1, pycriu, iptables, iproute2; build .venv
	sh scripts/bootstrap.sh

test: setup                 ## the whole suite (unit + integration with the real criu)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PYTEST) -q -ra

unit: setup                 ## unit tests only (no root needed)
	$(PYTEST) -q -m 'not integration'

demo: setup                 ## the live-migration demo (DEMO_ARGS='--path cli --keep' ...)
	$(PY) -m demo $(DEMO_ARGS)

proto:                      ## regenerate criu_macvlan/macvlan_pb2.py and its type stub (.pyi) from images/macvlan.proto
	mkdir -p build/proto
	protoc --proto_path=. --python_out=build/proto --pyi_out=build/proto images/macvlan.proto
	cp build/proto/images/macvlan_pb2.py criu_macvlan/macvlan_pb2.py
	cp build/proto/images/macvlan_pb2.pyi criu_macvlan/macvlan_pb2.pyi

bench: setup               ## criu-macvlan vs native CRIU (N=1,10,100,1000; 31 runs, 15 at N=1000; ~16 min) -> benchmarks/results/latest.*; then bench-runc's part
	$(PY) -m pip install -q --config-settings editable_mode=compat -e '.[bench]'
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/bench_runc.py -o benchmarks/results

bench-runc: setup          ## runc checkpoint/restore, one macvlan: plugin (cold, serve) vs a no-op script (15 runs, ~1 min) -> benchmarks/results/runc.*
	$(PY) benchmarks/bench_runc.py -o benchmarks/results

bench-quick: setup         ## smoke check of the benchmark: N=1,10, 3 runs -> /tmp/criu-macvlan-bench-quick/ (the committed results stay)
	$(PY) -m pip install -q --config-settings editable_mode=compat -e '.[bench]'
	$(PY) benchmarks/bench.py --quick -o /tmp/criu-macvlan-bench-quick
	$(PY) benchmarks/bench_runc.py --runs 3 -o /tmp/criu-macvlan-bench-quick

clean:
	rm -rf build .venv .pytest_cache .mypy_cache .ruff_cache

fuzz: setup                 ## fuzz the sidecar reader: >=200k inputs (atheris if it installs, else hypothesis)
	$(PY) -m pip install -q -e '.[fuzz]' || echo "fuzz: atheris did not install; hypothesis only"
	$(PY) tests/fuzz_sidecar.py --runs $${FUZZ_RUNS:-200000}
	$(PY) tests/fuzz_sidecar.py --engine hypothesis --runs $${FUZZ_HYPOTHESIS_RUNS:-20000}

soak: setup                 ## >=100 dump/restore cycles; checks links, netns, fds and the tree's state
	CRIU_MACVLAN_SOAK=$${SOAK_CYCLES:-100} $(PYTEST) -q -ra -m soak tests/test_soak.py

zdtm: setup                 ## CRIU's zdtm static/macvlan (ns, uns, each also --rpc), natively and with the plugin; fetches CRIU's sources into build/zdtm
	$(PY) scripts/zdtm.py

zdtm-harm: setup            ## zdtm's network and socket tests (netns*, socket-tcp*, socket_udp*, sockets*; flavors h, ns, uns; ~7 min), natively and with the plugin
	$(PY) scripts/zdtm.py --harm --flavors h,ns,uns
