# make demo    set up, then train focal loss and EFL on the embedded long-tailed set and compare them
# make demo-improved   the same with the paper's improved baseline: focal loss, EFL and EQFL
# make experiment   make demo's comparison over 3 seeds: mean +- std of every metric and of EFL - focal loss
# make experiment-improved   the same for the improved baseline: focal loss, EFL and EQFL over 3 seeds
# make test    set up, then run the test suite
# make install create .venv (PyPI requirements, detectron2, this project in editable mode)
# make bench-gpu  every GPU check (CUDA tests, loss and training-step benchmarks) in one report: needs a GPU
# make gpu-bundle .gpu/: detectron2's sources and wheels, for a GPU machine without network (docs/speed.md)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# auto | upstream | pypi-sources: see tools/install_detectron2.sh
DETECTRON2_ROUTE ?= auto
export DETECTRON2_ROUTE

.PHONY: install demo demo-improved experiment experiment-improved test bench-gpu gpu-bundle clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml tools/install_detectron2.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	tools/install_detectron2.sh $(VENV)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: install
	$(PY) tools/demo.py

demo-improved: install
	$(PY) tools/demo.py --detector improved

experiment: install
	$(PY) tools/experiment.py

experiment-improved: install
	$(PY) tools/experiment.py --detector improved --output-dir output/experiment-improved

test: install
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=10

bench-gpu: install
	$(PY) benchmarks/gpu_report.py --output output/gpu_report.md

gpu-bundle: install
	tools/gpu_bundle.sh .gpu

clean:
	rm -rf $(VENV) output
