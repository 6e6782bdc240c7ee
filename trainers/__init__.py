"""Training: pure registered preference losses (losses.py), sequence log-probs, the preference
trainer, reference-model handling, the synthetic tabular experiment and reward/cost model training.

Never imports vLLM.
"""
