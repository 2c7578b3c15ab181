"""An oracle policy for generated questions: it searches like a careful agent would.

It knows the question's structure (the subject and the chain of relations stored in the task
row) but not the answers: it searches the subject, reads the bridge entity out of the returned
passages, searches the bridge, reads the answer, and answers. So an oracle episode succeeds only
if the retriever, the passage formatting and the environment all work, which is what the tests
check; its well-formed, reasoned responses also make SFT warm-start data.

The decision is a function of what has been seen so far (the searches issued and the passages
returned), not of hidden state, so the environment can ask for the expert's next step at any
point of any episode, even one where a learner took the earlier steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .generated import RELATIONS, extract_fact

#: (action, observation) of each well-formed step so far.
Trace = Sequence[tuple[str, str]]


_NOUNS = {"born_in": "birthplace", "birth_year": "birth year", "alma_mater": "university",
          "employer": "employer", "founded_year": "founding year", "university_city": "city",
          "headquarters": "headquarters city"}


def _name(relation: str) -> str:
    """How the reasoning names a relation ("the birthplace of X")."""
    return _NOUNS.get(relation, relation.replace("_", " "))


def is_generated_task(task: Mapping[str, Any]) -> bool:
    """Whether the oracle can play ``task`` (a generated row, with subject and relations)."""
    return bool(task.get("subject")) and bool(task.get("relations"))


def oracle_response(task: Mapping[str, Any], trace: Trace) -> str:
    """The expert's next raw response (``<think>`` + one action) after ``trace``.

    For each hop it looks for the fact in every passage seen so far; when it is missing it
    searches "<subject> <hint>", then the subject alone, then the whole question, and answers
    "unknown" (failing) when all three searches came back without it.
    """
    if not is_generated_task(task):
        raise ValueError("the oracle needs a generated task row (with 'subject' and 'relations')")
    question, relations = str(task["question"]), list(task["relations"])
    observations = [obs for _, obs in trace]
    issued = [action for action, _ in trace]
    subject, facts = str(task["subject"]), []
    for relation in relations:
        value = next((v for v in (extract_fact(o, subject, relation) for o in observations) if v), None)
        if value is None:
            queries = [f"{subject} {RELATIONS[relation].hint}", subject, question]
            tries = sum(f"<search>{q}</search>" in issued for q in queries)
            known = "".join(facts)
            if tries >= len(queries):
                return (f"<think>{known}I could not find the {_name(relation)} of {subject}.</think>"
                        "<answer>unknown</answer>")
            return (f"<think>{known}I need the {_name(relation)} of {subject}; I will search for it.</think>"
                    f"<search>{queries[tries]}</search>")
        facts.append(f"The {_name(relation)} of {subject} is {value}. ")
        subject = value
    return f"<think>{''.join(facts)}That answers the question.</think><answer>{subject}</answer>"


class OraclePolicy:
    """The oracle for one task row; call :meth:`act` with each observation in turn."""

    def __init__(self, task: Mapping[str, Any]) -> None:
        if not is_generated_task(task):
            raise ValueError("the oracle needs a generated task row (with 'subject' and 'relations')")
        self.task = task
        self.trace: list[tuple[str, str]] = []
        self._last_action: str | None = None

    def act(self, observation: str) -> str:
        """The next response given the observation that followed the previous one."""
        if self._last_action is not None:
            self.trace.append((self._last_action, observation))
        response = oracle_response(self.task, self.trace)
        self._last_action = response[response.index("</think>") + len("</think>"):]
        return response


def play_oracle(env: Any, task: Mapping[str, Any], max_steps: int = 10) -> list[Any]:
    """Play ``task`` in ``env`` with the oracle; returns the list of step results."""
    oracle = OraclePolicy(task)
    observation = env.reset(task)
    results = []
    for _ in range(max_steps):
        result = env.step(oracle.act(observation))
        results.append(result)
        observation = result.observation
        if result.done:
            break
    return results
