# The few commands people type. `make run` tries the driver on this machine; `make test` is what CI runs.
CARGO ?= cargo

.PHONY: run test mutants mutants-diff build lint fmt clean

run:
	$(CARGO) run -q -p e2e --bin demo

# test-deps.sh installs what the tests need (root with apt-get/pip) or stops naming it;
# e2e/cluster/build.sh builds the pinned Kubernetes components once per go.sum (outside the repo).
test:
	./e2e/test-deps.sh
	./e2e/cluster/build.sh >/dev/null
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# Mutation testing of the safety-critical code (.cargo/mutants.toml; README "Tests that can
# fail"). Not part of `make test`: the whole set takes hours. MUTANTS_ARGS narrows it, e.g.
# MUTANTS_ARGS="--file driver/src/mkfs.rs --cargo-arg=--lib" for one file against the unit
# tests alone (`--cargo-arg` also keeps the build from linking every integration test).
# Without debug info a mutant builds several times faster; nothing here needs a debugger.
MUTANTS_ENV = CARGO_PROFILE_DEV_DEBUG=0
mutants:
	command -v cargo-mutants >/dev/null || $(CARGO) install --locked cargo-mutants@27.1.0
	$(MUTANTS_ENV) $(CARGO) mutants --output target $(MUTANTS_ARGS)

# The mutants of what this branch changed since main: run it before submitting.
mutants-diff:
	command -v cargo-mutants >/dev/null || $(CARGO) install --locked cargo-mutants@27.1.0
	mkdir -p target
	git diff main... > target/mutants.diff
	$(MUTANTS_ENV) $(CARGO) mutants --output target --in-diff target/mutants.diff $(MUTANTS_ARGS)

build:
	$(CARGO) build --workspace --release

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
