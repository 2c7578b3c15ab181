"""The offline WebShop environment: pages, reward, determinism, the expert, and a short training run."""

import functools
import importlib.util
import math
import random

import pytest

from environments.base import HistoryEntry, PromptView
from environments.webshop import (
    Goal,
    Product,
    RealWebShopEnvironment,
    WebShopEnvironment,
    generate_catalogue,
    generate_goals,
    get_world,
    score_purchase,
    type_reward,
    webshop_tasks,
)

from .conftest import tiny_config

SMALL = dict(num_products=300, test_size=50)


def act(env, action):
    return env.step(f"<think>shopping</think><action>{action}</action>")


def play_expert(env, row, limit=15):
    env.reset(row)
    actions = []
    for _ in range(limit):
        actions.append(env.expert_action())
        result = act(env, actions[-1])
        if result.done:
            return result, actions
    raise AssertionError(f"expert did not finish: {actions}")


@pytest.fixture(scope="module")
def env():
    return WebShopEnvironment()


@pytest.fixture(scope="module")
def small_env():
    return WebShopEnvironment(**SMALL)


# ------------------------------------------------------------------ catalogue, goals, splits


def test_catalogue_and_goals_are_seeded():
    assert generate_catalogue(200, seed=3).products == generate_catalogue(200, seed=3).products
    assert generate_catalogue(200, seed=3).products != generate_catalogue(200, seed=4).products
    catalogue = generate_catalogue(200, seed=3)
    assert len({p.asin for p in catalogue.products}) == 200
    assert len({p.category for p in catalogue.products}) == 5
    goals = generate_goals(catalogue, test_size=40, seed=1)
    assert goals == generate_goals(catalogue, test_size=40, seed=1)
    assert goals != generate_goals(catalogue, test_size=40, seed=2)
    for goal in goals:  # the target product satisfies its own goal
        assert score_purchase(goal, catalogue.by_asin[goal.asin], dict(goal.options)).score == 1.0
        assert goal.instruction.endswith(f"price lower than {goal.price_upper:.2f} dollars")
        assert all(v in goal.instruction for v in goal.option_values)


def test_splits_are_disjoint_and_datasets_deterministic():
    world = get_world(**SMALL)
    train, test = world.split_indices("train"), world.split_indices("test")
    assert len(test) == 50 and len(train) == 250 and not set(train) & set(test)
    assert not {world.goals[i].asin for i in train} & {world.goals[i].asin for i in test}
    rows = webshop_tasks("test", num_tasks=10, seed=7, **SMALL)
    assert rows.to_list() == webshop_tasks("test", num_tasks=10, seed=7, **SMALL).to_list()
    assert rows.to_list() != webshop_tasks("test", num_tasks=10, seed=8, **SMALL).to_list()
    assert len(rows) == 10 and {r["split"] for r in rows} == {"test"}
    assert set(rows["goal_index"]) <= set(test)
    assert webshop_tasks("eval", max_steps=5, **SMALL)["goal_index"] == test  # env-only kwargs are ignored
    assert len(webshop_tasks("train", **SMALL)) == 250
    with pytest.raises(TypeError, match="unexpected"):
        webshop_tasks("train", seed_of_catalogue=1)
    with pytest.raises(ValueError, match="unknown split"):
        webshop_tasks("dev", **SMALL)
    with pytest.raises(ValueError, match="split"):
        WebShopEnvironment(**SMALL).reset({"goal_index": test[0], "split": "train"})


def test_same_row_gives_the_same_task(small_env):
    other = WebShopEnvironment(**SMALL)
    row = {"goal_index": 123, "split": "train"}
    first, second = small_env.reset(row), other.reset(row)
    assert first == second == "WebShop [SEP] Search"
    assert small_env.task_description == other.task_description
    assert small_env.task_type == other.task_type
    assert small_env.admissible_actions == other.admissible_actions == ("search[<your query>]",)
    assert play_expert(small_env, row)[1] == play_expert(other, row)[1]
    small_env.reset({"goal_index": 124})
    assert small_env.task_description != other.task_description
    reseeded = WebShopEnvironment(catalogue_seed=1, **SMALL)
    reseeded.reset(row)
    assert reseeded.task_description != other.task_description


# ------------------------------------------------------------------ the expert


def test_expert_buys_a_perfect_item_on_every_goal(env):
    world = env.world
    rows = [{"goal_index": i, "split": "test"} for i in world.split_indices("test")[:25]]
    rows += [{"goal_index": i, "split": "train"} for i in world.split_indices("train")[:25]]
    for row in rows:
        result, actions = play_expert(env, row)
        assert result.won and result.reward == 10.0 and result.info["score"] == 1.0, (row, actions)
        assert actions[0].startswith("search[") and actions[-1] == "click[buy now]"
        assert len(actions) <= env.default_max_turns
    assert env.expert_action() is None  # the episode is over
    again = act(env, "click[buy now]")
    assert again.done and again.reward == 0.0 and not again.won


def test_expert_pages_to_a_target_beyond_page_one(env):
    world = env.world
    goal = next(g for g in world.goals if world.search.search(g.query).index(g.asin) >= 10)
    result, actions = play_expert(env, {"goal_index": goal.index})
    assert "click[next >]" in actions and result.info["score"] == 1.0


# ------------------------------------------------------------------ pages


def test_pagination_and_navigation(small_env):
    small_env.reset({"goal_index": 0})
    observation = act(small_env, "search[gluten free]").observation
    assert "Page 1 (Total results: 50)" in observation
    assert "click[next >]" in small_env.admissible_actions and "click[< prev]" not in small_env.admissible_actions
    page1 = small_env.engine.page_asins()
    assert len(page1) == 10 and all(f"click[{a.lower()}]" in small_env.admissible_actions for a in page1)
    assert all(a in observation for a in page1)
    act(small_env, "click[next >]")
    page2 = small_env.engine.page_asins()
    assert "Page 2 (Total results: 50)" in small_env.engine.observation()
    assert len(page2) == 10 and not set(page1) & set(page2)
    assert {"click[< prev]", "click[next >]"} <= set(small_env.admissible_actions)
    for _ in range(3):
        act(small_env, "click[next >]")
    assert "Page 5" in small_env.engine.observation() and "click[next >]" not in small_env.admissible_actions
    assert not act(small_env, "click[next >]").info["admissible"]
    for _ in range(3):
        act(small_env, "click[< prev]")
    assert small_env.engine.page_asins() == page2
    item = page2[3]
    observation = act(small_env, f"click[{item.lower()}]").observation
    product = small_env.world.catalogue.by_asin[item]
    assert product.title in observation and "Buy Now" in observation and f"${product.price:.2f}" in observation
    assert act(small_env, "click[< prev]").observation.startswith("Back to Search [SEP] Page 2")
    assert act(small_env, "click[back to search]").observation == "WebShop [SEP] Search"
    assert small_env.admissible_actions == ("search[<your query>]",)


def test_item_page_options_and_subpages(small_env):
    world = small_env.world
    goal = next(g for g in world.goals if len(world.catalogue.by_asin[g.asin].options) == 2)
    product = world.catalogue.by_asin[goal.asin]
    small_env.reset({"goal_index": goal.index})
    act(small_env, f"search[{goal.query}]")
    while goal.asin not in small_env.engine.page_asins():
        act(small_env, "click[next >]")
    act(small_env, f"click[{goal.asin.lower()}]")
    expected = {"click[back to search]", "click[< prev]", "click[description]", "click[features]", "click[buy now]"}
    expected |= {f"click[{v}]" for v in product.option_values}
    assert set(small_env.admissible_actions) == expected
    group, values = next(iter(product.options.items()))
    act(small_env, f"click[{values[0]}]")
    assert small_env.engine.selected == {group: values[0]}
    observation = act(small_env, f"click[{values[1]}]").observation  # same group: replaces
    assert small_env.engine.selected == {group: values[1]} and f"{values[1]} (selected)" in observation
    assert act(small_env, "click[description]").observation.endswith(product.description)
    assert set(small_env.admissible_actions) == {"click[back to search]", "click[< prev]"}
    act(small_env, "click[< prev]")
    features = act(small_env, "click[features]").observation
    assert all(f in features for f in product.features)
    act(small_env, "click[< prev]")
    assert small_env.engine.selected == {group: values[1]}  # kept across sub-pages
    result = act(small_env, "click[buy now]")
    assert result.done and result.info["purchased"] == goal.asin and 0 <= result.info["score"] <= 1


def test_malformed_and_unavailable_actions_change_nothing(small_env):
    small_env.reset({"goal_index": 5})
    act(small_env, "search[vegan]")
    before = (small_env.engine.observation(), small_env.admissible_actions, small_env.engine.page_number)
    malformed = ["", "buy it", "<action>click[next >]</action>", "<think>x</think>",
                 "<think>x</think><action></action>",
                 "<think>a</think><action>click[next >]</action><action>click[next >]</action>"]
    for text in malformed:
        result = small_env.step(text)
        assert not result.action_valid and not result.done and result.reward == 0.0
        assert (small_env.engine.observation(), small_env.admissible_actions, small_env.engine.page_number) == before
    for action in ["click[buy now]", "click[nonexistent]", "search[shoes]", "click[]", "jump[3]", "click[< prev]",
                   "click next >", "search[", "click[b000000000]"]:
        result = act(small_env, action)
        assert result.action_valid and not result.info["admissible"] and not result.done
        assert result.observation == before[0]
        assert (small_env.engine.observation(), small_env.admissible_actions, small_env.engine.page_number) == before


def test_random_agent_never_crashes(small_env):
    rng = random.Random(0)
    vocabulary = ["click[next >]", "click[< prev]", "click[buy now]", "search[red shoes]", "click[??]", "nonsense"]
    for goal_index in range(20):
        small_env.reset({"goal_index": goal_index})
        for _ in range(15):
            pool = list(small_env.admissible_actions) + vocabulary
            action = rng.choice(pool).replace("<your query>", rng.choice(["tea", "black hoodie", "x"]))
            result = act(small_env, action) if rng.random() < 0.9 else small_env.step(action)
            assert isinstance(result.observation, str) and math.isfinite(result.reward)
            assert 0.0 <= result.info["score"] <= 1.0
            if result.done:
                assert result.reward in (0.0, 10.0) and (result.reward == 10.0) == result.won
                break


def test_max_steps_counts_every_answer():
    env = WebShopEnvironment(max_steps=3, **SMALL)
    env.reset({"goal_index": 0})
    assert not env.step("garbage").done
    assert not act(env, "click[nothing]").done
    assert env.step("garbage").done


def test_reference_mode_plays_ill_formed_answers():
    env = WebShopEnvironment(action_parsing="reference", **SMALL)
    env.reset({"goal_index": 5})
    result = env.step("<action>Search[vegan]</action>")  # no reasoning: flagged invalid, played anyway
    assert (result.action, result.action_valid, result.history_text) == ("search[vegan]", False, "search[vegan]")
    assert env.engine.page == "results" and result.info["admissible"] and env.steps == 1
    result = env.step("<think>x</think><action>click[back to search]</action>")
    assert result.action_valid and env.engine.page == "search"
    # A tagless answer: its last 20 characters, lower-cased, go to the shop; here they form a search.
    result = env.step("I will Search[vegan snacks]")
    assert (result.action, result.action_valid) == ("search[vegan snacks]", False)
    assert env.engine.page == "results" and env.engine.query == "vegan snacks"
    result = env.step("I would like to search[vegan potato chips]")  # the tail cuts the verb off: a no-op
    assert (result.action, result.history_text) == ("[vegan potato chips]", "[vegan potato chips]")
    assert env.steps == 4 and not result.info["admissible"]


def test_reference_mode_counts_each_answer_once():
    env = WebShopEnvironment(max_steps=3, action_parsing="reference", **SMALL)
    env.reset({"goal_index": 0})
    assert not env.step("<action>search[tea]</action>").done
    assert not env.step("garbage").done and env.steps == 2
    assert env.step("garbage").done


def test_task_rows_belong_to_the_world_of_the_environment_kwargs():
    import environments

    other = dict(SMALL, goal_seed=1)  # the same catalogue, other goals
    rows = environments.tasks("webshop", split="test", num_tasks=10, seed=0, env_kwargs=other)
    env = environments.make("webshop", **other)
    for row in rows:
        env.reset(row)
        assert env.goal.asin == row["asin"] and env.task_description == env.world.goals[row["goal_index"]].instruction
    assert rows["asin"] != webshop_tasks("test", num_tasks=10, seed=0, **SMALL)["asin"]
    foreign = [row for row in webshop_tasks("test", num_tasks=10, seed=0, **SMALL)
               if row["asin"] != env.world.goals[row["goal_index"]].asin]
    assert foreign
    with pytest.raises(ValueError, match="another world"):
        env.reset(foreign[0])


def test_partial_reward_option_pays_the_score(small_env):
    env = WebShopEnvironment(partial_reward=True, **SMALL)
    goal = env.world.goals[7]
    env.reset({"goal_index": 7})
    act(env, f"search[{goal.query}]")
    while goal.asin not in env.engine.page_asins():
        act(env, "click[next >]")
    act(env, f"click[{goal.asin.lower()}]")
    result = act(env, "click[buy now]")  # no option selected
    assert result.done and not result.won
    assert result.info["score"] < 1.0 and result.reward == pytest.approx(10 * result.info["score"])


# ------------------------------------------------------------------ reward (hand-computed)


def product(**overrides):
    values = dict(asin="B000000001", title="Acme Gluten Free Potato Chips, Family Size", category="grocery",
                  subcategory="snacks", product_type="potato chips", attributes=("gluten free", "vegan"),
                  options={"size": ("6 pack", "12 pack"), "flavor name": ("sea salt", "barbecue")}, price=19.99,
                  rating=4.5, description="Crunchy chips. Non GMO corn oil.", features=("Vegan: tasty",))
    values.update(overrides)
    return Product(**values)


def goal(**overrides):
    values = dict(index=0, split="train", asin="B000000001", instruction="i need gluten free kosher potato chips",
                  product_type="potato chips", category="grocery", subcategory="snacks",
                  attributes=("gluten free", "kosher"), options=(("size", "12 pack"),), price_upper=20.0,
                  query="gluten free kosher potato chips")
    values.update(overrides)
    return Goal(**values)


def test_reward_full_and_partial_matches():
    full = goal(attributes=("gluten free", "vegan"))
    assert score_purchase(full, product(), {"size": "12 pack"}).score == 1.0
    assert score_purchase(full, product(), {"size": "12 pack"}).success
    # 1 of 2 attributes (kosher missing), option matched, price ok: (1 + 1 + 1) / (2 + 1 + 1)
    assert score_purchase(goal(), product(), {"size": "12 pack"}).score == pytest.approx(3 / 4)
    # ... and over the price bound: (1 + 1 + 0) / 4
    assert score_purchase(goal(), product(price=20.01), {"size": "12 pack"}).score == pytest.approx(2 / 4)
    # no option selected, wrong option selected: (1 + 0 + 1) / 4
    assert score_purchase(goal(), product(), {}).score == pytest.approx(2 / 4)
    assert score_purchase(goal(), product(), {"size": "6 pack"}).score == pytest.approx(2 / 4)
    # two options, one right, all attributes, price exactly at the bound: (2 + 1 + 1) / (2 + 2 + 1)
    two = goal(attributes=("gluten free", "vegan"), options=(("size", "12 pack"), ("flavor name", "barbecue")))
    breakdown = score_purchase(two, product(price=20.0), {"size": "12 pack", "flavor name": "sea salt"})
    assert (breakdown.attributes_matched, breakdown.options_matched, breakdown.price_ok) == (2, 1, True)
    assert breakdown.score == pytest.approx(4 / 5) and not breakdown.success


def test_reward_text_fallbacks():
    # "non gmo" is no listed attribute but is written in the description; word order of a listed one is free
    fallback = goal(attributes=("non gmo", "free gluten"), options=())
    assert score_purchase(fallback, product(), {}).score == 1.0
    # an option value written in the title counts without being clicked (as in the paper)
    in_title = goal(attributes=("vegan",), options=(("size", "family size"),))
    assert score_purchase(in_title, product(), {}).score == 1.0
    # a word of the attribute alone is not enough: (0 + 0 + 1) / (1 + 0 + 1)
    assert score_purchase(goal(attributes=("gmo free",), options=()), product(), {}).score == pytest.approx(1 / 2)


def test_type_reward_tiers():
    g = goal(attributes=("vegan",), options=())
    assert type_reward(g, product()) == 1.0
    popcorn = product(product_type="popcorn", title="Acme Popcorn")  # same subcategory
    assert type_reward(g, popcorn) == 0.5
    assert score_purchase(g, popcorn, {}).score == pytest.approx(0.5)
    tea = product(subcategory="beverages", product_type="green tea", title="Acme Green Tea")  # same category
    assert type_reward(g, tea) == 0.1
    assert score_purchase(g, tea, {}).score == pytest.approx(0.1)
    mug = product(category="home", subcategory="kitchen", product_type="coffee mug", title="Acme Coffee Mug")
    assert type_reward(goal(product_type="coffee beans"), mug) == 0.5  # half of the type's words in the title
    lamp = product(category="home", subcategory="decor", product_type="lamp", title="Acme Lamp")
    assert type_reward(g, lamp) == 0.0
    assert score_purchase(g, lamp, {}).score == 0.0


# ------------------------------------------------------------------ prompt, adapter


def test_prompt_shows_task_window_and_actions(small_env):
    small_env.reset({"goal_index": 3})
    history = tuple(HistoryEntry(f"obs {i}", f"click[{i}]") for i in range(4))
    view = PromptView(task=small_env.task_description, step=4, observation="WebShop [SEP] Search",
                      admissible_actions=small_env.admissible_actions, history=history)
    prompt = small_env.render_prompt(view, small_env.default_history_length)
    assert f"Your task is to: {small_env.task_description}" in prompt
    assert "[Observation 3: 'obs 2', Action 3: 'click[2]']" in prompt and "obs 1" not in prompt
    assert "step 5" in prompt and "'search[<your query>]'" in prompt
    assert prompt.rstrip().endswith("<action> </action> tags.")
    assert "\nNow it's your turn" in prompt
    first = small_env.render_prompt(PromptView(small_env.task_description, 0, "WebShop [SEP] Search",
                                               small_env.admissible_actions), 2)
    assert "Prior to this step" not in first
    assert (small_env.default_history_length, small_env.default_max_turns) == (2, 15)


@pytest.mark.skipif(importlib.util.find_spec("web_agent_site") is not None, reason="WebShop is installed")
def test_real_webshop_adapter_explains_what_is_missing():
    with pytest.raises(ImportError, match="WebShop installation"):
        RealWebShopEnvironment()


def test_registered_name_builds_the_environment_when_present():
    import environments

    if "webshop" not in environments.available():
        pytest.skip("webshop not registered in environments/__init__.py yet")
    env = environments.make("webshop", **SMALL)
    assert isinstance(env, WebShopEnvironment) and env.reset({"goal_index": 0}) == "WebShop [SEP] Search"
    if hasattr(environments, "tasks"):
        rows = environments.tasks("webshop", split="test", num_tasks=4, seed=1, **SMALL)
        assert len(rows) == 4 and env.reset(rows[0]) == "WebShop [SEP] Search"


# ------------------------------------------------------------------ training


class ExpertDrivenWebShop(WebShopEnvironment):
    """Plays the oracle's action whatever the model wrote, so that training rows reach the deep pages
    (results, item pages, purchases with reward 10) that a random tiny model never gets to."""

    def parse_action(self, text):
        return self.expert_action(), True


@pytest.mark.parametrize("env_class", [WebShopEnvironment, ExpertDrivenWebShop])
def test_opid_trains_two_steps_on_webshop(tiny_model_dir, tiny_tokenizer, tmp_path, env_class):
    from opid_trl import EpisodeSkills, OPIDTrainer

    seen = []

    def extractor(trajectories):
        seen.extend(trajectories)
        return [EpisodeSkills("Search the key words, open a matching item, pick the options, buy.",
                              {0: "Search for the product type and its attributes."}) for _ in trajectories]

    expert = env_class is ExpertDrivenWebShop
    trainer = OPIDTrainer(
        model=tiny_model_dir,
        args=tiny_config(tmp_path, max_steps=2, max_turns=6 if expert else 3, max_prompt_length=1024, beta=0.0),
        train_dataset=webshop_tasks("train", num_tasks=8, **SMALL),
        processing_class=tiny_tokenizer,
        environment=functools.partial(env_class, **SMALL),
        skill_extractor=extractor,
    )
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert all(h["env/rows"] > 0 and h["env/errors"] == 0 for h in history)
    assert seen and all(t.task.endswith("dollars") and t.task_type for t in seen)
    if expert:  # every episode buys a perfect item within 6 steps
        assert all(h["env/success_rate"] == 1.0 and h["reward"] == 10.0 for h in history)
        assert all(t.steps[-1].info["score"] == 1.0 for t in seen)
        assert {t.steps[1].info["page"] for t in seen} == {"item"}


def test_world_is_identical_across_processes():
    """Every rank of a distributed run builds its own world: it must not depend on hash seeds."""
    import os
    import subprocess
    import sys

    code = ("import hashlib; from environments.webshop import get_world;"
            "w = get_world(num_products=300, test_size=50);"
            "t = '|'.join(g.instruction + g.asin for g in w.goals);"
            "t += '|'.join(w.search.search(g.query)[0] for g in w.goals[:20]);"
            "print(hashlib.sha256(t.encode()).hexdigest())")
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        digests.add(out.stdout.strip())
    assert len(digests) == 1
