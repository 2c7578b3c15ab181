"""The rule-based skill extractor on hand-made trajectories of every environment.

Each rule is checked with exact skill texts on trajectories written with the observation and action
texts of fetch, ALFWorld, WebShop and search QA: the rules know no environment, so each must say
the same thing about the same situation in all four.
"""

import pytest

from environments import make
from environments.base import THINK_ACTION_RESPONSE_FORMAT
from opid_trl import StepRecord, Trajectory
from opid_trl.rollout.episode import Episode
from opid_trl.skills.extractors import RuleBasedSkillExtractor, SkillExtractor
from opid_trl.trajectory import MAX_EPISODE_SKILL_CHARS

FETCH, ALFWORLD, WEBSHOP, SEARCH = (make(name) for name in ("fetch", "alfworld", "webshop", "search_qa"))


# -- the texts of each environment
def room(i, item=None):
    return f"You are in room {i}. You see a {item}." if item else f"You are in room {i}."


FETCH_INVALID = FETCH.invalid_action_feedback()

ALF_TASK = "put some apple in fridge."
ALF_START = ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly around you, "
             "you see a cabinet 1, a countertop 1, a fridge 1, and a sinkbasin 1.\n\nYour task is to: "
             "put some apple in fridge.")
ALF_COUNTER = "You arrive at countertop 1. On the countertop 1, you see a apple 1, and a bread 1."
ALF_CABINET = "You arrive at cabinet 1. The cabinet 1 is closed."
ALF_PICKUP = "You pick up the apple 1 from the countertop 1."
ALF_FRIDGE = "You arrive at fridge 1. The fridge 1 is closed."
ALF_FRIDGE_OPEN = "You open the fridge 1. The fridge 1 is open. In it, you see a lettuce 1."
ALF_NOTHING = "Nothing happens."

WS_TASK = "i need red running shoes, and price lower than 50.00 dollars"
WS_SEARCH = f"WebShop [SEP] Instruction: [SEP] {WS_TASK} [SEP] Search"


def ws_results(page, *asins):
    products = " [SEP] ".join(f"{asin} [SEP] Running Shoe {asin} [SEP] $39.99" for asin in asins)
    prev = " [SEP] < Prev" if page > 1 else ""
    return (f"Instruction: [SEP] {WS_TASK} [SEP] Back to Search [SEP] Page {page} (Total results: 50){prev} "
            f"[SEP] Next > [SEP] {products}")


def ws_item(asin, selected=""):
    red = "red (selected)" if selected == "red" else "red"
    return (f"Instruction: [SEP] {WS_TASK} [SEP] Back to Search [SEP] < Prev [SEP] color [SEP] {red} [SEP] blue "
            f"[SEP] Running Shoe {asin} [SEP] Price: $39.99 [SEP] Rating: 4.5 [SEP] Description [SEP] Features "
            "[SEP] Buy Now")


QA_TASK = "What is the capital of France?"
QA_START = "No information has been retrieved yet."
QA_INVALID = SEARCH.invalid_action_feedback()
QA_PARIS = ('<information>Doc 1(Title: "Paris") Paris is the capital and most populous city of France.\n'
            'Doc 2(Title: "France") France is a country in Western Europe.</information>')
QA_LYON = '<information>Doc 1(Title: "Lyon") Lyon is the third-largest city of France.</information>'
QA_SEARCH = "<search>capital of france</search>"
QA_LYON_SEARCH = "<search>largest cities of france</search>"
QA_ANSWER = "<answer>paris</answer>"


# -- building and analysing trajectories
def play(env, task, moves, success):
    """A trajectory of ``env`` from ``(observation, action)`` or ``(observation, action, reward)`` moves;
    an action ``None`` is an ill-formed answer."""
    steps = []
    for i, (observation, action, *reward) in enumerate(moves):
        response = env.response_example.replace("{action}", action) if action else "I think I should move on."
        steps.append(StepRecord(index=i, observation=observation, response=response, action=action,
                                action_valid=action is not None, reward=reward[0] if reward else 0.0))
    return Trajectory("t", 0, task, steps, sum(s.reward for s in steps), success,
                      response_format=env.response_format, response_example=env.response_example)


def analyze(trajectory, **kwargs):
    return RuleBasedSkillExtractor(**kwargs)([trajectory])[0]


def check(skills, episode, steps, rules):
    """The exact episode skill, step skills, and the rule names behind them."""
    assert skills.episode_skill == episode
    assert skills.step_skills == {i: text for i, (_, text) in steps.items()}
    assert skills.meta["rules"] == {"episode": rules, "steps": {i: rule for i, (rule, _) in steps.items()}}


def decisive(action):
    return "decisive", f"Take '{action}' now: it makes progress on the task."


def detour(good, bad):
    return "detour", f"Here take '{good}' (it led on to success from this state), not '{bad}'."


def no_progress(action):
    return "no_progress", f"'{action}' changed nothing here; take a different admissible action."


def loop(action):
    return "loop", f"Do not take '{action}' here: it led back to a state you had already left."


def workflow(task, actions):
    return (f"To {task}, follow this workflow: {actions}. "
            "Keep this order of actions for tasks of this kind and avoid detours.")


def generic(task, n):
    return (f"The task '{task}' was not completed in {n} steps: check the task statement before each action "
            "and prefer actions that move towards it.")


STALL = "changed nothing (the observation stayed the same): when an action changes nothing, switch to a different one."


# -- 1. a success's workflow: the solution path, repeats counted
SUCCESS_WORKFLOWS = {
    "fetch": (play(FETCH, "take the key.", [
        (room(0, "cup"), "go east"), (room(1, "pen"), "go east"), (room(2, "map"), "go east"),
        (room(3, "key"), "take key", 10.0)], True),
        workflow("take the key", "go east (3 times) -> take key"), {3: decisive("take key")}),
    "alfworld": (play(ALFWORLD, ALF_TASK, [
        (ALF_START, "go to countertop 1"), (ALF_COUNTER, "take apple 1 from countertop 1"),
        (ALF_PICKUP, "go to fridge 1"), (ALF_FRIDGE, "open fridge 1"),
        (ALF_FRIDGE_OPEN, "move apple 1 to fridge 1", 10.0)], True),
        workflow("put some apple in fridge", "go to countertop 1 -> take apple 1 from countertop 1 -> "
                 "go to fridge 1 -> open fridge 1 -> move apple 1 to fridge 1"),
        {4: decisive("move apple 1 to fridge 1")}),
    "webshop": (play(WEBSHOP, WS_TASK, [
        (WS_SEARCH, "search[red running shoes]"), (ws_results(1, "b0111"), "click[next >]"),
        (ws_results(2, "b0222"), "click[next >]"), (ws_results(3, "b0789"), "click[b0789]"),
        (ws_item("b0789"), "click[red]"), (ws_item("b0789", "red"), "click[buy now]", 1.0)], True),
        workflow(WS_TASK, "search[red running shoes] -> click[next >] (2 times) -> click[b0789] -> click[red] -> "
                 "click[buy now]"), {5: decisive("click[buy now]")}),
    "search_qa": (play(SEARCH, QA_TASK, [(QA_START, QA_SEARCH), (QA_PARIS, QA_ANSWER, 1.0)], True),
                  workflow("What is the capital of France?", f"{QA_SEARCH} -> {QA_ANSWER}"), {1: decisive(QA_ANSWER)}),
}


@pytest.mark.parametrize("env", SUCCESS_WORKFLOWS)
def test_success_workflow_keeps_every_step_of_the_path_with_counts(env):
    trajectory, episode, steps = SUCCESS_WORKFLOWS[env]
    check(analyze(trajectory), episode, steps, "success_workflow")


# -- 1b/4. a success's loops are cut from the workflow; their first step is a detour told the path's action
SUCCESS_LOOPS = {
    "fetch": (play(FETCH, "take the key.", [
        (room(0, "cup"), "go east"), (room(1, "pen"), "go west"), (room(0, "cup"), "go east"),
        (room(1, "pen"), "go east"), (room(2, "key"), "take key", 10.0)], True),
        workflow("take the key", "go east (2 times) -> take key"),
        {1: detour("go east", "go west"), 4: decisive("take key")}),
    "alfworld": (play(ALFWORLD, ALF_TASK, [
        (ALF_START, "go to countertop 1"), (ALF_COUNTER, "go to cabinet 1"), (ALF_CABINET, "go to countertop 1"),
        (ALF_COUNTER, "take apple 1 from countertop 1"), (ALF_PICKUP, "go to fridge 1"), (ALF_FRIDGE, "open fridge 1"),
        (ALF_FRIDGE_OPEN, "move apple 1 to fridge 1", 10.0)], True),
        workflow("put some apple in fridge", "go to countertop 1 -> take apple 1 from countertop 1 -> "
                 "go to fridge 1 -> open fridge 1 -> move apple 1 to fridge 1"),
        # the cabinet is off the path: what to do there is unknown, so it is not marked
        {1: detour("take apple 1 from countertop 1", "go to cabinet 1"), 6: decisive("move apple 1 to fridge 1")}),
    "webshop": (play(WEBSHOP, WS_TASK, [
        (WS_SEARCH, "search[red running shoes]"), (ws_results(1, "b0123", "b0456"), "click[b0123]"),
        (ws_item("b0123"), "click[< prev]"), (ws_results(1, "b0123", "b0456"), "click[b0456]"),
        (ws_item("b0456"), "click[buy now]", 1.0)], True),
        workflow(WS_TASK, "search[red running shoes] -> click[b0456] -> click[buy now]"),
        {1: detour("click[b0456]", "click[b0123]"), 4: decisive("click[buy now]")}),
    "search_qa": (play(SEARCH, QA_TASK, [
        (QA_START, QA_SEARCH), (QA_PARIS, QA_SEARCH), (QA_PARIS, QA_ANSWER, 1.0)], True),
        workflow("What is the capital of France?", f"{QA_SEARCH} -> {QA_ANSWER}"),
        {1: detour(QA_ANSWER, QA_SEARCH), 2: decisive(QA_ANSWER)}),
}


@pytest.mark.parametrize("env", SUCCESS_LOOPS)
def test_success_loops_are_cut_and_their_steps_told_the_action_that_led_on(env):
    trajectory, episode, steps = SUCCESS_LOOPS[env]
    check(analyze(trajectory), episode, steps, "success_workflow")


def test_a_long_workflow_loses_its_middle_not_its_counts():
    moves = []
    for k in range(20):  # 20 x (take a distractor, walk two rooms east): 40 workflow entries
        moves += [(f"You are in room {3 * k}. You see a coin {k}.", f"take coin {k}"),
                  (f"You are in room {3 * k}.", "go east"), (f"You are in room {3 * k + 1}.", "go east")]
    moves.append(("You are in room 60. You see a key.", "take key", 10.0))
    episode = analyze(play(FETCH, "take the key.", moves, True)).episode_skill
    entries = ["take coin 0", "go east (2 times)", "take coin 1", "go east (2 times)", "take coin 2",
               "go east (2 times)", "...", "go east (2 times)", "take coin 18", "go east (2 times)", "take coin 19",
               "go east (2 times)", "take key"]
    assert episode == workflow("take the key", " -> ".join(entries))
    assert len(episode) <= MAX_EPISODE_SKILL_CHARS


# -- 2. a failure's repetition rules fire only on actions that changed nothing
FAILURES_WITH_PROGRESS = {
    # a corridor walked east four times, out of turns: every "go east" changed the room
    "fetch": play(FETCH, "take the key.", [(room(i, item), "go east") for i, item in
                                           enumerate(["cup", "pen", "map", "lamp"])], False),
    # "look" after each move shows something new each time
    "alfworld": play(ALFWORLD, ALF_TASK, [
        (ALF_START, "go to cabinet 1"), (ALF_CABINET, "look"),
        ("You are facing the cabinet 1. Next to it, you see nothing.", "go to sinkbasin 1"),
        ("You arrive at sinkbasin 1. On the sinkbasin 1, you see nothing.", "look")], False),
    "webshop": play(WEBSHOP, WS_TASK, [(WS_SEARCH, "search[red running shoes]")] + [
        (ws_results(page, f"b0{page}00"), "click[next >]") for page in (1, 2, 3, 4)], False),
    "search_qa": play(SEARCH, QA_TASK, [
        (QA_START, QA_LYON_SEARCH), (QA_LYON, "<search>lyon</search>"),
        ('<information>Doc 1(Title: "Lyon") Lyon is in France.</information>', "<answer>lyon</answer>")], False),
}


@pytest.mark.parametrize("env", FAILURES_WITH_PROGRESS)
def test_repeating_an_action_that_changes_the_state_is_never_flagged(env):
    trajectory = FAILURES_WITH_PROGRESS[env]
    skills = analyze(trajectory)
    task = trajectory.task.rstrip(".")
    check(skills, generic(task, len(trajectory.steps)), {}, "failure_generic")  # no step it could judge


FAILURES_WITHOUT_PROGRESS = {
    "fetch": (play(FETCH, "take the key.", [
        (room(0, "cup"), "look"), (room(0, "cup"), "look"), (room(0, "cup"), "look"), (room(0, "cup"), "go east"),
        (room(1, "pen"), "go east")], False),
        "Do not repeat 'look': it changed nothing 3 of the 3 times it was taken. Steps 1-3 " + STALL,
        {0: no_progress("look"), 1: no_progress("look"), 2: no_progress("look")}),
    # the first "open" shows "Nothing happens." (a new text, nothing moved), the next ones change nothing
    "alfworld": (play(ALFWORLD, ALF_TASK, [
        (ALF_START, "go to countertop 1"), (ALF_COUNTER, "open countertop 1"), (ALF_NOTHING, "open countertop 1"),
        (ALF_NOTHING, "open countertop 1"), (ALF_NOTHING, "open countertop 1")], False),
        "Do not repeat 'open countertop 1': it changed nothing 2 of the 4 times it was taken.",
        {2: no_progress("open countertop 1"), 3: no_progress("open countertop 1")}),
    # "buy now" is not on the results page: the page stays as it was
    "webshop": (play(WEBSHOP, WS_TASK, [(WS_SEARCH, "search[red running shoes]")] + [
        (ws_results(1, "b0123"), "click[buy now]")] * 3 + [(ws_results(1, "b0123"), "click[b0123]")], False),
        "Do not repeat 'click[buy now]': it changed nothing 3 of the 3 times it was taken. Steps 2-4 " + STALL,
        {1: no_progress("click[buy now]"), 2: no_progress("click[buy now]"), 3: no_progress("click[buy now]")}),
    # the same query retrieves the same passages
    "search_qa": (play(SEARCH, QA_TASK, [(QA_START, QA_SEARCH), (QA_PARIS, QA_SEARCH), (QA_PARIS, QA_SEARCH),
                                        (QA_PARIS, QA_SEARCH)], False),
                  f"Do not repeat '{QA_SEARCH}': it changed nothing 2 of the 4 times it was taken.",
                  {1: no_progress(QA_SEARCH), 2: no_progress(QA_SEARCH)}),
}


@pytest.mark.parametrize("env", FAILURES_WITHOUT_PROGRESS)
def test_an_action_that_changed_nothing_is_flagged_where_it_was_taken(env):
    trajectory, rules, steps = FAILURES_WITHOUT_PROGRESS[env]
    check(analyze(trajectory), "Avoid these mistakes: " + rules, steps, "failure_rules")


def test_repeat_threshold_counts_the_takes_that_changed_nothing():
    trajectory = FAILURES_WITHOUT_PROGRESS["alfworld"][0]  # 4 takes, 2 of them provably futile
    assert "Do not repeat" in analyze(trajectory, repeat_threshold=3).episode_skill
    assert "Do not repeat" not in analyze(trajectory, repeat_threshold=4).episode_skill


def test_a_stall_needs_stall_length_futile_steps_in_a_row():
    trajectory = FAILURES_WITHOUT_PROGRESS["fetch"][0]  # 3 futile "look"s in a row
    assert "Steps 1-3 changed nothing" in analyze(trajectory, stall_length=3).episode_skill
    assert "changed nothing (the observation" not in analyze(trajectory, stall_length=4).episode_skill


def test_repeat_rules_are_capped_most_futile_first():
    moves = [(room(0, "cup"), action) for action in ["look"] * 5 + ["inventory"] * 4 + ["wait"] * 3 + ["sleep"] * 3]
    rules = analyze(play(FETCH, "take the key.", moves + [(room(0, "cup"), "go east")], False)).episode_skill
    assert "'look': it changed nothing 5 of the 5" in rules and "'inventory': it changed nothing 4 of the 4" in rules
    assert "'sleep': it changed nothing 3 of the 3" in rules and "'wait'" not in rules  # ties: alphabetical


# -- 2b/4. back-and-forth only when the state returned; the move that led back is the loop step
BACK_AND_FORTH = {
    "fetch": (play(FETCH, "take the key.", [
        (room(0, "cup"), "go east"), (room(1, "pen"), "go west"), (room(0, "cup"), "go east"),
        (room(1, "pen"), "go west"), (room(0, "cup"), "go east")], False),
        "Avoid going back and forth between 'go east' and 'go west': it brought you back to where you were.",
        {1: loop("go west")}),
    "alfworld": (play(ALFWORLD, ALF_TASK, [
        (ALF_START, "go to countertop 1"), (ALF_COUNTER, "go to fridge 1"), (ALF_FRIDGE, "go to countertop 1"),
        (ALF_COUNTER, "go to fridge 1"), (ALF_FRIDGE, "go to countertop 1")], False),
        "Avoid going back and forth between 'go to fridge 1' and 'go to countertop 1': it brought you back to "
        "where you were.", {2: loop("go to countertop 1")}),
    "webshop": (play(WEBSHOP, WS_TASK, [
        (WS_SEARCH, "search[red running shoes]"), (ws_results(1, "b0123"), "click[b0123]"),
        (ws_item("b0123"), "click[< prev]"), (ws_results(1, "b0123"), "click[b0123]"),
        (ws_item("b0123"), "click[< prev]"), (ws_results(1, "b0123"), "click[next >]")], False),
        "Avoid going back and forth between 'click[b0123]' and 'click[< prev]': it brought you back to where "
        "you were.", {2: loop("click[< prev]")}),
}


@pytest.mark.parametrize("env", BACK_AND_FORTH)
def test_back_and_forth_is_flagged_when_the_state_returned(env):
    trajectory, rule, steps = BACK_AND_FORTH[env]
    check(analyze(trajectory), "Avoid these mistakes: " + rule, steps, "failure_rules")


def test_alternating_actions_are_not_back_and_forth_unless_the_state_returned():
    # the actions of the fetch case above, in a maze where every move reaches a new room: exploration
    moves = [(room(i), action) for i, action in enumerate(["go east", "go west", "go east", "go west", "go east"])]
    check(analyze(play(FETCH, "take the key.", moves, False)), generic("take the key", 5), {}, "failure_generic")


def test_alternating_actions_that_both_change_nothing_are_a_stall_not_back_and_forth():
    moves = [(ALF_NOTHING, action) for action in ["close countertop 1", "open countertop 1"] * 2]
    skills = analyze(play(ALFWORLD, ALF_TASK, [(ALF_START, "go to countertop 1"),
                                               (ALF_COUNTER, "open countertop 1")] + moves, False))
    assert skills.episode_skill == "Avoid these mistakes: Steps 3-5 " + STALL  # numbered as the prompt does
    assert skills.meta["rules"]["steps"] == {2: "no_progress", 3: "no_progress", 4: "no_progress"}


def test_search_qa_loop_back_to_information_already_retrieved():
    trajectory = play(SEARCH, QA_TASK, [(QA_START, QA_SEARCH), (QA_PARIS, QA_LYON_SEARCH), (QA_LYON, QA_SEARCH),
                                        (QA_PARIS, "<answer>lyon</answer>")], False)
    check(analyze(trajectory), generic("What is the capital of France?", 4), {2: loop(QA_SEARCH)},
          "failure_generic")


def test_a_move_that_first_led_somewhere_new_is_not_a_loop_when_repeated():
    # back in room 0, "go east" leads to room 1 again: seen, but that move had led somewhere new
    skills = analyze(BACK_AND_FORTH["fetch"][0])
    assert 2 not in skills.step_skills and 3 not in skills.step_skills  # 3: the same loop move, flagged once


# -- 3. format advice: a well-formed answer in the environment's format, with the right action
FORMAT_FAILURES = {
    "fetch": (FETCH, play(FETCH, "take the key.", [
        (room(0, "cup"), None), (FETCH_INVALID, "look"), (room(0, "cup"), "go east"), (room(1, "pen"), "go east")],
        False), "go east"),  # the "look" played at that state changed nothing: the next action there is shown
    "alfworld": (ALFWORLD, play(ALFWORLD, ALF_TASK, [
        (ALF_START, None), (FETCH_INVALID, "go to countertop 1"), (ALF_COUNTER, "go to fridge 1")], False),
        "go to countertop 1"),
    "webshop": (WEBSHOP, play(WEBSHOP, WS_TASK, [
        (WS_SEARCH, None), (FETCH_INVALID, "search[red running shoes]"), (ws_results(1, "b0123"), "click[b0123]")],
        False), "search[red running shoes]"),
    "search_qa": (SEARCH, play(SEARCH, QA_TASK, [(QA_START, None), (QA_INVALID, QA_SEARCH), (QA_PARIS, None)],
                               False), QA_SEARCH),
}


@pytest.mark.parametrize("env", FORMAT_FAILURES)
def test_an_ill_formed_answer_is_shown_a_well_formed_one_in_the_environments_format(env):
    environment, trajectory, action = FORMAT_FAILURES[env]
    skills = analyze(trajectory)
    example = environment.response_example.replace("{action}", action)
    assert environment.parse_action(example) == (action, True)  # the example is well-formed there
    assert skills.step_skills[0] == f"Answer exactly like: {example}"
    assert skills.meta["rules"]["steps"][0] == "format"
    invalid = sum(not s.action_valid for s in trajectory.steps)
    assert skills.episode_skill.startswith(
        f"Avoid these mistakes: {invalid} of {len(trajectory.steps)} answers were ill-formed; every answer must "
        f"follow the format: {environment.response_format} Answer exactly like: {example}")


def test_format_advice_follows_the_environment():
    search_format = SEARCH.response_format
    assert "<search>" in search_format and "<answer>" in search_format and "<action>" not in search_format
    skills = analyze(FORMAT_FAILURES["search_qa"][1])
    check(skills, f"Avoid these mistakes: 2 of 3 answers were ill-formed; every answer must follow the format: "
                  f"{search_format} Answer exactly like: <think>...</think>{QA_SEARCH}",
          # the last ill-formed answer: no well-formed answer was ever played at its state, so no example
          {0: ("format", f"Answer exactly like: <think>...</think>{QA_SEARCH}")}, "failure_rules")
    assert not any("<action>" in a for a in [skills.episode_skill, *skills.step_skills.values()])


@pytest.mark.parametrize("env", [FETCH, SEARCH])
def test_a_played_episode_carries_its_environments_example(env):
    trajectory = Episode(env=env, task_row={}, group_id=0, trajectory_id="t").to_trajectory(0.0, 1.0)
    assert (trajectory.response_format, trajectory.response_example) == (env.response_format, env.response_example)


def test_format_advice_defaults_to_think_action():
    assert make("fetch").response_format == THINK_ACTION_RESPONSE_FORMAT  # the base class default
    steps = [StepRecord(0, "a", "go east", action=None, action_valid=False),
             StepRecord(1, "Invalid action format.", "<action>go east</action>", action="go east"),
             StepRecord(2, "b", "<action>go east</action>", action="go east")]
    skills = analyze(Trajectory("t", 0, "take the key.", steps, 0.0, False))  # no format, no example known
    assert skills.step_skills == {0: "Answer exactly like: <think>...</think><action>go east</action>"}
    assert THINK_ACTION_RESPONSE_FORMAT in skills.episode_skill


SUCCESS_FORMAT = {
    "fetch": play(FETCH, "take the key.", [
        (room(0, "cup"), None), (FETCH_INVALID, "go east"), (room(1, "key"), "take key", 10.0)], True),
    "search_qa": play(SEARCH, QA_TASK, [(QA_START, None), (QA_INVALID, QA_SEARCH), (QA_PARIS, QA_ANSWER, 1.0)], True),
}


@pytest.mark.parametrize("env", SUCCESS_FORMAT)
def test_success_marks_the_first_ill_formed_answer_and_the_recovery(env):
    trajectory = SUCCESS_FORMAT[env]
    first, last = trajectory.steps[1].action, trajectory.steps[2].action
    example = ("format", "Answer exactly like: " + trajectory.response_example.replace("{action}", first))
    check(analyze(trajectory), workflow(trajectory.task.rstrip("."), f"{first} -> {last}"),
          {0: example, 1: example, 2: decisive(last)}, "success_workflow")


def test_format_example_in_a_success_is_the_action_of_the_solution_path():
    # ill-formed in room 0, then a detour west... back in room 0: the path goes east from there
    trajectory = play(FETCH, "take the key.", [
        (room(1, "cup"), None), (FETCH_INVALID, "go west"), (room(0, "pen"), "go east"),
        (room(1, "cup"), "go east"), (room(2, "key"), "take key", 10.0)], True)
    skills = analyze(trajectory)
    example = "Answer exactly like: <think>...</think><action>go east</action>"
    check(skills, workflow("take the key", "go east -> take key"),
          {0: ("format", example), 1: detour("go east", "go west"), 4: decisive("take key")}, "success_workflow")


# -- the protocol and the safety properties
def test_cap_keeps_earliest_is_deterministic_and_meta_names_only_kept_steps():
    trajectory = play(FETCH, "take the key.", [
        (room(0, "cup"), None), (FETCH_INVALID, "look"), (room(0, "cup"), "look"), (room(0, "cup"), "look"),
        (room(0, "cup"), "go east"), (room(1, "pen"), "go east")], False)
    first = analyze(trajectory, max_step_skills=2)
    assert list(first.step_skills) == [0, 1]
    assert first.meta["rules"]["steps"] == {0: "format", 1: "no_progress"}
    assert analyze(trajectory, max_step_skills=2) == first
    assert list(analyze(trajectory).step_skills) == [0, 1, 2, 3]


def test_empty_trajectory_is_a_failure_not_an_exception():
    extractor = RuleBasedSkillExtractor()
    assert isinstance(extractor, SkillExtractor) and extractor.supports_overlap
    result = extractor([Trajectory("t", 0, "task", [], 0.0, False)])[0]
    assert result.failed and extractor.pop_metrics() == {"requests": 1.0, "failures": 1.0}
