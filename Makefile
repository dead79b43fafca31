# rtchub: `make run` serves, `make test` proves it. Both set everything up first.
# The interpreter of the venv: Debian's python3.11 when it can make one (built with
# PGO and LTO: 1.65x the speed of this machine's pyenv build on the relay's kind of
# Python code, docs/benchmarks.md), else the first python3 on PATH.
PY ?= $(shell /usr/bin/python3.11 -c "import ensurepip, venv" >/dev/null 2>&1 \
	&& echo /usr/bin/python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
# The GStreamer WHIP publisher of the tests (tests/e2e/gst_whip_publish.py, system
# Python): PyGObject for GStreamer, the WebRTC/SDP typelibs, webrtcbin, libnice, encoders.
GST_DEPS := /usr/lib/python3/dist-packages/gi/overrides/Gst.py=python3-gst-1.0 \
	/usr/lib/*/girepository-1.0/GstWebRTC-1.0.typelib=gir1.2-gst-plugins-bad-1.0 \
	/usr/lib/*/girepository-1.0/GstSdp-1.0.typelib=gir1.2-gst-plugins-base-1.0 \
	/usr/lib/*/gstreamer-1.0/libgstwebrtc.so=gstreamer1.0-plugins-bad \
	/usr/lib/*/gstreamer-1.0/libgstnice.so=gstreamer1.0-nice \
	/usr/lib/*/gstreamer-1.0/libgstvpx.so=gstreamer1.0-plugins-good \
	/usr/lib/*/gstreamer-1.0/libgstx264.so=gstreamer1.0-plugins-ugly
# Debian packages the tests drive for real, as file=package pairs: only the
# packages whose binary (or, for libraries, a file they install; a glob may stand
# for the multiarch folder) is missing get installed (node may come from elsewhere).
SYSTEM_DEPS := /usr/bin/chromium=chromium /usr/bin/redis-server=redis-server \
	/usr/bin/turnserver=coturn /usr/bin/stun=stun-client /usr/bin/node=nodejs /usr/bin/npm=npm \
	/usr/bin/unshare=util-linux /usr/sbin/ip=iproute2 /usr/sbin/nginx=nginx \
	/usr/bin/janus=janus /usr/bin/janus-pp-rec=janus-tools /usr/bin/ffmpeg=ffmpeg \
	/usr/bin/whip-client=simple-whip-client $(GST_DEPS)
# What `make run` needs: Janus, so that an SFU call (--sfu local) works out of the box,
# and ffmpeg / janus-pp-rec for recordings and broadcasts.
RUN_DEPS := /usr/bin/janus=janus /usr/bin/janus-pp-rec=janus-tools /usr/bin/ffmpeg=ffmpeg

.PHONY: run test test-fast bench lint docs system-deps run-deps install-deps clean wheelhouse vendor

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

# rtchub's dependencies as wheels: tests/test_wheel.py installs the built
# wheel into a fresh venv from here, inside tools/netns-run (no network there).
$(VENV)/wheelhouse/.ready: pyproject.toml | $(BIN)/python
	rm -rf $(VENV)/wheelhouse
	$(BIN)/pip wheel -q -w $(VENV)/wheelhouse .
	rm -f $(VENV)/wheelhouse/rtchub-*.whl
	touch $@

wheelhouse: $(VENV)/wheelhouse/.ready

# The bench's Node load client and reference relay (the test suite smoke-tests them).
bench/node_modules/.installed: bench/package.json bench/package-lock.json
	cd bench && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Browser libraries the pages load (hls.js for /watch), from npm at build time:
# rtchub serves them itself, so no CDN is needed at run time.
WEB_VENDOR := rtchub/web/vendor/hls.js/hls.min.js
$(WEB_VENDOR): vendor/package.json vendor/package-lock.json
	cd vendor && npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(@D)
	cp vendor/node_modules/hls.js/dist/hls.min.js vendor/node_modules/hls.js/LICENSE $(@D)/
	touch $@

vendor: $(WEB_VENDOR)

# The real PeerJS browser client for tests/e2e/test_peerjs_browser.py (test-only).
tests/e2e/peerjs/node_modules/.installed: tests/e2e/peerjs/package.json tests/e2e/peerjs/package-lock.json
	cd tests/e2e/peerjs && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# apt-get only when something is missing and we may (root); otherwise say what is missing.
system-deps:
	@$(MAKE) --no-print-directory install-deps DEPS="$(SYSTEM_DEPS)"

run-deps:
	@$(MAKE) --no-print-directory install-deps DEPS="$(RUN_DEPS)"

install-deps:
	@missing=""; for pair in $(DEPS); do bin=$${pair%%=*}; pkg=$${pair#*=}; \
	  command -v $$(basename $$bin) >/dev/null 2>&1 || [ -e $$bin ] || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# SFU=local (default) starts a supervised Janus, installed when missing; SFU= runs
# without one (mesh only), and so does a machine where Janus cannot be installed.
SFU ?= local
run: $(VENV)/.installed $(WEB_VENDOR)
	@[ -z "$(SFU)" ] || $(MAKE) --no-print-directory run-deps || \
	  echo "rtchub: Janus is not installed: serving without an SFU (mesh rooms only)"
	@sfu=""; if [ -n "$(SFU)" ] && command -v janus >/dev/null 2>&1; then sfu="--sfu $(SFU)"; fi; \
	exec $(BIN)/rtchub serve --host $(HOST) --port $(PORT) $$sfu

test: system-deps $(VENV)/.installed-test bench/node_modules/.installed $(VENV)/wheelhouse/.ready \
		$(WEB_VENDOR) tests/e2e/peerjs/node_modules/.installed
	$(BIN)/ruff check rtchub tests
	tools/netns-run $(BIN)/python -m pytest -q -rfE

test-fast: $(VENV)/.installed-test $(WEB_VENDOR)
	tools/netns-run $(BIN)/python -m pytest -q -m "not e2e" -x

bench: system-deps $(VENV)/.installed-test bench/node_modules/.installed
	ulimit -n 65536 2>/dev/null || ulimit -n $$(ulimit -Hn); \
	$(BIN)/rtchub bench --all --write docs/benchmarks.md --json bench/results/latest.json

lint: $(VENV)/.installed-test
	$(BIN)/ruff check rtchub tests

# Regenerate the README's configuration table from rtchub/settings.py, and the
# browser SDK's protocol names from rtchub/protocol/constants.py.
docs: $(VENV)/.installed
	$(BIN)/python tools/readme_table.py
	$(BIN)/python -m rtchub.protocol.constants > rtchub/web/sdk/protocol.js

clean:
	rm -rf $(VENV) .pytest_cache artifacts vendor/node_modules rtchub/web/vendor
