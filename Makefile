# The few commands people type. `make run` tries the driver on this machine; `make test` is what CI runs.
CARGO ?= cargo

.PHONY: run test build lint fmt clean

run:
	$(CARGO) run -q -p e2e --bin demo

# test-deps.sh installs what the tests need (root with apt-get/pip) or stops naming it;
# e2e/cluster/build.sh builds the pinned Kubernetes components once per go.sum (outside the repo).
test:
	./e2e/test-deps.sh
	./e2e/cluster/build.sh >/dev/null
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
