# One command each: set up, test, run. See README.md.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
export IPYTHONDIR := $(CURDIR)/.ipython

.PHONY: setup test test-fast run notebooks results compare benchmarks

setup:  ## fresh machine -> .venv with the package, test tools and Chromium for the browser test
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	@if [ "$$(id -u)" = 0 ] && ! command -v chromium >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the browser test will skip"; fi

test:   ## lint, then the notebooks under nbval (the chain, once) and every test (which reuse its work folder); writes only to a temporary folder
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -ra --durations=15 --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg notebooks tests

run:    ## the whole notebook chain with papermill into runs/<name>/ (parameters: pipeline.yml)
	$(BIN)/gender-lib run --config pipeline.yml

notebooks:  ## re-execute the committed notebooks in place (the default run on the embedded sample; stages write to a scratch folder)
	$(BIN)/python scripts/execute_notebooks.py

FULL ?= $(abspath ../shared/datasets/combined/aligned)
#: The second training source: UTKFace's aligned faces, data/UTKFace/unlabeled/ of a clone of
#: github.com/mattans/AgeProgression (the reader keeps the 13,926 files stamped 2017-01-12 19:00 or later).
UTKFACE ?= $(abspath ../AgeProgression/data/UTKFace/unlabeled)
DATA = $(FULL)$(if $(wildcard $(UTKFACE)),:$(UTKFACE))
#: make results BACKBONE=vggface: the same recipe on VGG-Face descriptors (needs your converted vgg_face.mat);
#: for dlib it also trains the shipped model (the frozen head, flip-averaged) and checks it source by source.
BACKBONE ?= dlib

results:  ## the README's real-data results: both sources, person-disjoint, vs the original leaky split (BACKBONE=dlib|vggface); for dlib also the shipped model
	@test -d "$(UTKFACE)" || echo "NOTE: no UTKFace faces at $(UTKFACE) (README: Data): training on $(FULL) only; make results UTKFACE=<folder> to add them"
	$(BIN)/gender-lib extract --data-root $(DATA) --workdir runs/full-person-$(BACKBONE) --protocol person --backbone $(BACKBONE) --quiet
	$(BIN)/gender-lib train --workdir runs/full-person-$(BACKBONE) -o checkpoints/$(BACKBONE)_gender_head.npz
	$(BIN)/gender-lib evaluate --workdir runs/full-person-$(BACKBONE) --head checkpoints/$(BACKBONE)_gender_head.npz
	$(BIN)/gender-lib extract --data-root $(FULL) --workdir runs/full-original-$(BACKBONE) --protocol original --backbone $(BACKBONE) --quiet
	$(BIN)/gender-lib train --workdir runs/full-original-$(BACKBONE)
	$(BIN)/gender-lib evaluate --workdir runs/full-original-$(BACKBONE)
ifeq ($(BACKBONE),dlib)
	$(BIN)/gender-lib train --workdir runs/full-person-dlib --flip-tta true $(SHIPPED) -o checkpoints/dlib_gender_model.npz
	$(BIN)/gender-lib evaluate --workdir runs/full-person-dlib --head checkpoints/dlib_gender_model.npz
	$(BIN)/gender-lib evaluate --workdir runs/full-person-dlib --head checkpoints/dlib_gender_model.npz --leave-one-source-out --quiet
endif

compare:  ## research: the retired model kinds on the full data (docs/results.md; ~1 h on 2 cores, ~13 min of it extracting level-2 maps once)
	$(BIN)/gender-lib manifest --data-root $(FULL) --workdir runs/levels-person --protocol person --quiet
	$(BIN)/python -m experiments.comparison --workdir runs/levels-person

benchmarks:  ## speed benchmarks (medians and ratios; JSON under benchmarks/results/)
	$(BIN)/python benchmarks/dataset.py
	$(BIN)/python benchmarks/dlib_align.py
	$(BIN)/python benchmarks/extract.py
	$(BIN)/python benchmarks/descriptor.py
	$(BIN)/python benchmarks/predict_latency.py
	$(BIN)/python benchmarks/predict_latency.py --head checkpoints/dlib_gender_model.npz
	$(BIN)/python benchmarks/head_modes.py
	$(BIN)/python benchmarks/detect.py --small

test-fast:  ## unit tests only: no notebooks, Ray, browser or shared data
	$(BIN)/python -m pytest -ra -m "not slow and not browser and not notebooks and not ray and not realdata" tests
