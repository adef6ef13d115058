"""Teachers: the frozen models that give soft targets. A classifier, a prompted causal LM (label
words, calibration, the shared-prefix cache), GGUF files, and the teacher-logit cache."""
