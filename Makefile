# The project's entry points. `make test` is what CI runs (.ci/run) and works on a fresh Debian
# machine as root: it installs what it needs first (scripts/setup.sh, idempotent).
CARGO ?= cargo
FUZZ_SECONDS ?= 300

.PHONY: test demo setup fmt lint unit bench bench-relay bench-soak bench-api bench-chains bench-config fuzz

test: setup fmt lint unit

setup:
	bash scripts/setup.sh

# The whole path on this machine (root): Open vSwitch, libvirtd, the controller, relay-host and
# three VNF guests, the seed workflow through the `sfc` CLI, firewall pushes and traffic through
# the chain, with a summary (tests/src/bin/demo.rs). Cleans up on exit and on Ctrl-C.
demo: setup
	$(CARGO) run --locked -p e2e-tests --bin demo

fmt:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

# Protocol throughput against raw HMAC-SHA256, then the relay's latency, fan-out and memory, as
# recorded in BENCHMARKS.md.
bench: setup
	$(CARGO) bench -p relay-protocol --locked
	$(CARGO) bench -p relay-host --features testing --bench relay --locked
	$(CARGO) bench -p controller-stub --bench api --locked

# The relay alone: round-trip latency against a forwarding baseline, 1000-guest fan-out, memory.
bench-relay: setup
	$(CARGO) bench -p relay-host --features testing --bench relay --locked

# The controller's API: port-pair creates per second and list latency with 10,000 port pairs,
# against the same HTTP stack answering without the database (API_BENCH_PAIRS to change).
bench-api: setup
	$(CARGO) bench -p controller-stub --bench api --locked

# Port-chain create through the API to flows installed on a real (userspace) Open vSwitch, for 1
# and 500 chains (CHAIN_BENCH_CHAINS to change), against one `ovs-ofctl --bundle add-flows` of
# the same flows. Needs root (network namespaces, OVS daemons).
bench-chains: setup
	$(CARGO) bench -p e2e-tests --bench chains --locked

# VNF-config API call to the agent's Ack recorded by the controller, on a TCG guest under
# libvirt with the real controller and relay-host, against the same frame echoed by a guest
# program over the same virtio-serial port (CONFIG_BENCH_ROUNDS, CONFIG_BENCH_PER_ROUND to
# change). Needs root (libvirtd, QEMU).
bench-config: setup
	$(CARGO) bench -p e2e-tests --bench config_latency --locked

# 60 s soak of one relay with 1000 guests (SOAK_SECS, SOAK_GUESTS to change); not part of `test`.
bench-soak: setup
	$(CARGO) bench -p relay-host --features testing --bench soak --locked

# Fuzzes the protocol decoder (needs the nightly toolchain and cargo-fuzz).
fuzz:
	cd fuzz && $(CARGO) +nightly run --bin seed-corpus
	cd fuzz && $(CARGO) +nightly fuzz run decode corpus/decode -- \
		-max_total_time=$(FUZZ_SECONDS) -max_len=72000 -rss_limit_mb=4096 -print_final_stats=1
