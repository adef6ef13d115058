"""Teachers: the frozen models that give soft targets. A classifier (classifier), a prompted
causal LM (prompt; label_words, few_shot, prompt_scoring, prefix_cache), and the teacher-logit
cache (cache)."""
