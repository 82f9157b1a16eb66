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

.PHONY: install lock test test-slow demo clean

install: $(STAMP)

# constraints.txt pins every package to the versions CI passed with (refresh: make lock)
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,ray,ui,identity]'
	# insightface's metadata pulls the GUI opencv-python; its real needs (onnx, onnxruntime,
	# scipy, scikit-image, opencv-python-headless) are dependencies of ipfacediff itself.
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt insightface
	$(BIN)/python -c "import torch, insightface, facenet_pytorch, decord, hnswlib, ray, gradio, dlib, ipfacediff; print('installed: ipfacediff', ipfacediff.__version__, 'torch', torch.__version__)"
	touch $(STAMP)

# newest versions that resolve today, pinned into constraints.txt (then run make test and commit)
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -e '.[dev,ray,ui,identity]' && .lock-venv/bin/python -m pip install --quiet --no-deps insightface
	{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^ipfacediff'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv

test: install
	$(BIN)/python -m pytest -q

# The main job: edit the sample clip offline with the tiny backbone (random weights: it shows the
# mechanics, not a real edit; give a Stable Diffusion checkpoint for real edits, see README).
test-slow: install
	$(BIN)/python -m pytest -q -m slow

demo: install
	mkdir -p $(DEMO_OUT)
	$(BIN)/ipfacediff edit "$$($(BIN)/ipfacediff sample)" -p "eyeglasses" --backbone tiny --steps 20 \
		-o $(DEMO_OUT)/astronaut-eyeglasses.mp4 --overwrite
	@echo "demo result: $(abspath $(DEMO_OUT))/astronaut-eyeglasses.mp4 (+ .strip.png, .json)"

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
