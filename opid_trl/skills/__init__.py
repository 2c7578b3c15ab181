"""The skill stage: skill extractors read finished trajectories in hindsight (`extractors`), their
answers are routed to steps (`analysis`, with its audit trail in `audit`), the old policy re-scores
the sampled tokens under the skill prompts (`scoring`), and A_OPID is completed (`stage`). The
skill-signal estimators (`signal`) measure whether the skill term points the right way."""
