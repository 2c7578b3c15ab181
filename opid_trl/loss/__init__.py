"""The loss stage's memory bound: GRPO's loss back-propagated chunk by chunk (`chunked`), with
the dropout masks of the no-grad pass replayed (`random_state`)."""
