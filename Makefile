# The project's entry points. `make test` is what CI runs (.ci/run) and works on a fresh Debian
# machine as root: it installs what it needs first (scripts/setup.sh, idempotent).
CARGO ?= cargo
FUZZ_SECONDS ?= 300

.PHONY: test setup fmt lint unit bench fuzz

test: setup fmt lint unit

setup:
	bash scripts/setup.sh

fmt:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

# Protocol throughput against raw HMAC-SHA256, as recorded in BENCHMARKS.md.
bench: setup
	$(CARGO) bench -p relay-protocol --locked

# Fuzzes the protocol decoder (needs the nightly toolchain and cargo-fuzz).
fuzz:
	cd fuzz && $(CARGO) +nightly run --bin seed-corpus
	cd fuzz && $(CARGO) +nightly fuzz run decode corpus/decode -- \
		-max_total_time=$(FUZZ_SECONDS) -max_len=72000 -rss_limit_mb=4096 -print_final_stats=1
