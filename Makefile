# make install | make test | make demo  -- each works on a fresh machine from nothing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ipfacediff-installed
# Real weights: a folder laid out like ../shared/models (used when present), else the user cache /
# a download from upstream (see docs/user-guide.md#model-weights).
SHARED_MODELS := $(abspath ../shared/models)
export IPFACEDIFF_MODELS ?= $(if $(wildcard $(SHARED_MODELS)/SHA256SUMS),$(SHARED_MODELS),)
export HF_HUB_OFFLINE ?= 1
DEMO_OUT ?= demo-output

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# insightface's metadata pulls the GUI opencv-python; its real needs (onnx, onnxruntime,
	# scipy, scikit-image, opencv-python-headless) are dependencies of ipfacediff itself.
	$(BIN)/python -m pip install --quiet --no-deps 'insightface==2.1'
	$(BIN)/python -c "import torch, insightface, facenet_pytorch, decord, hnswlib, ipfacediff; print('installed: ipfacediff', ipfacediff.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/ipfacediff faces "$$($(BIN)/ipfacediff sample)" -o $(DEMO_OUT) --overwrite
	@echo "demo result: $(abspath $(DEMO_OUT))"

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
