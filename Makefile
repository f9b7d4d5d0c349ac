# Moongate — the two commands a newcomer needs:
#   make run    install what is missing, build, serve examples/quickstart
#   make test   install what is missing, build, run every test
BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
PREFIX     ?= /usr/local
CONFIG     ?= examples/quickstart/gateway.lua
FUZZ_SECONDS ?= 10
FUZZ_LONG_SECONDS ?= 600
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)

# What building needs, and what the tests need on top (real peers: h2/h2c
# clients, gRPC and WebSocket peers in Python, a Redis server; a headless
# browser for the status page).
BUILD_PACKAGES = build-essential cmake pkg-config libluajit2-5.1-dev libevent-dev libssl-dev \
                 libpcre2-dev libnghttp2-dev libhiredis-dev lua-cjson
TEST_PACKAGES  = lua-busted libcmocka-dev clang wrk curl openssl nghttp2-client python3 python3-h2 \
                 python3-grpcio python3-websockets redis-server chromium chromium-driver python3-selenium
DEBIAN_PACKAGES = $(BUILD_PACKAGES) $(TEST_PACKAGES)

.PHONY: all deps check-deps build run test test-c test-asan test-spec test-spec-h2 test-spec-asan fuzz fuzz-build fuzz-smoke bench install clean

all: build

# Installs the Debian packages that are missing (root, or passwordless sudo).
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"; \
	  else echo ""; echo "Cannot install packages: not root and no passwordless sudo."; \
	       echo "Run this once as root, then run make again:"; \
	       echo "  apt-get install -y$$missing"; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq$$missing >/dev/null \
	    || { echo "apt-get install failed; install these by hand:$$missing"; exit 1; }; \
	fi

# `make build` installs nothing: it says what is missing (make run / make test install it).
check-deps:
	@missing=""; for p in $(BUILD_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Missing Debian packages:$$missing"; \
	  echo "Install them with: apt-get install -y$$missing   (or run make run / make test, which do)"; exit 1; \
	fi

build: check-deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: deps
	@$(MAKE) --no-print-directory build
	$(BUILD)/gatewayd -c $(CONFIG)

# C unit tests (release build), the same tests under ASan+UBSan, the busted
# specs (unit + integration, inside gatewayd's runtime), and a short fuzz run.
test: deps
	@$(MAKE) --no-print-directory build test-c test-asan test-spec test-spec-h2 test-spec-asan fuzz-smoke
	@echo "make test: all suites passed"

test-c: build
	ctest --test-dir $(BUILD) --output-on-failure

test-asan: check-deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMG_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_BUILD) -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(ASAN_BUILD) --output-on-failure

test-spec: build
	GATEWAYD=$(CURDIR)/$(BUILD)/gatewayd $(BUILD)/gatewayd --spec

# The integration specs again with g:request over HTTP/2 (h2c, curl): every
# spec that talks through the helpers' request() runs on both wires, against
# the release and the ASan gatewayd.
test-spec-h2: build test-asan
	MOONGATE_SPEC_WIRE=h2 GATEWAYD=$(CURDIR)/$(BUILD)/gatewayd $(BUILD)/gatewayd --spec spec/integration
	MOONGATE_SPEC_WIRE=h2 ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=8 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  GATEWAYD=$(CURDIR)/$(ASAN_BUILD)/gatewayd $(BUILD)/gatewayd --spec spec/integration

# The same specs against the ASan+UBSan gatewayd: a memory error aborts a
# request and fails its spec; a leak makes gatewayd exit non-zero on SIGTERM.
# A small quarantine keeps RSS meaningful for the specs that bound it.
test-spec-asan: build test-asan
	ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=8 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  GATEWAYD=$(CURDIR)/$(ASAN_BUILD)/gatewayd $(BUILD)/gatewayd --spec

fuzz-build: check-deps
	@CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=Debug -DMG_FUZZ=ON -DMG_TESTS=OFF >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzz_request fuzz_response fuzz_chunked fuzz_ws

fuzz-smoke: fuzz-build
	spec/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

fuzz: fuzz-build
	spec/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_LONG_SECONDS)

bench: build
	bench/run.sh $(BUILD)/gatewayd

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
