"""Exemplar-selection agents for pillow-env.

Note: ``agents`` is also the import name of the unrelated ``openai-agents`` package; do not
install both in one environment.
"""
