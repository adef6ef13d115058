"""Data: where rows come from (sources: Hub, files), how class names match (labels), sampling,
the prepared splits on disk (prepare), text without labels (unlabeled) and tokenised batches.
Also where model files come from (model_paths: folders, Hub ids, GGUF; model_files: the load
policy, tokenizers, load errors), so teachers and students share them without importing each
other. Imports nothing above it but training.runs' atomic writes."""
