# The few commands people type. `make run` tries the driver on this machine; `make test` is what CI runs.
CARGO ?= cargo

.PHONY: run test build lint fmt clean

run:
	$(CARGO) run -q -p e2e --bin demo

test:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

build:
	$(CARGO) build --workspace --release

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
