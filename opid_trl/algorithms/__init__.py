"""Pure estimators of OPID: advantages, skill routing and injection, importance sampling.

Functions of tensors and lists with their shapes in the docstrings; no trainer, no model, no
process group (a collective, where one is needed, is passed in as a callable).
"""
