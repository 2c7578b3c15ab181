"""The declared skill-extractor interface: the base class, its defaults, and `as_skill_extractor`."""

import pytest

import opid_trl
from opid_trl import EpisodeSkills, StepRecord, Trajectory
from opid_trl.skills.extractors import (
    SKILL_EXTRACTORS,
    CallableSkillExtractor,
    OpenAISkillExtractor,
    PolicySkillExtractor,
    RuleBasedSkillExtractor,
    ScrambledSkillExtractor,
    ShuffledSkillExtractor,
    SkillExtractor,
    as_skill_extractor,
    make_skill_extractor,
)


def trajectory() -> Trajectory:
    step = StepRecord(index=0, observation="room", response="<think>t</think><action>go east</action>",
                      action="go east")
    return Trajectory("t0", 0, "take the key.", [step], 0.0, False)


class Minimal(SkillExtractor):
    def __call__(self, trajectories):
        return [EpisodeSkills("Look first.") for _ in trajectories]


class Legacy:
    """A user object written against the hasattr probes, not subclassing SkillExtractor."""

    supports_overlap = False

    def __init__(self):
        self.bound = None
        self.calls = 0

    def bind_trainer(self, trainer):
        self.bound = trainer

    def pop_metrics(self):
        return {"calls": float(self.calls)}

    def __call__(self, trajectories):
        self.calls += 1
        return (None for _ in trajectories)  # any iterable is accepted


def test_the_base_class_declares_the_trainer_hooks_with_defaults():
    extractor = Minimal()
    assert extractor.supports_overlap is True
    assert extractor.bind(object()) is None
    assert extractor.pop_metrics() == {}
    assert extractor([trajectory()])[0].episode_skill == "Look first."
    with pytest.raises(TypeError):
        SkillExtractor()  # __call__ is abstract


def test_built_in_extractors_are_skill_extractors():
    assert SKILL_EXTRACTORS == {"openai": OpenAISkillExtractor, "self": PolicySkillExtractor,
                                "rule_based": RuleBasedSkillExtractor, "shuffled": ShuffledSkillExtractor,
                                "scrambled": ScrambledSkillExtractor}
    assert all(issubclass(cls, SkillExtractor) for cls in SKILL_EXTRACTORS.values())
    assert PolicySkillExtractor.supports_overlap is False and RuleBasedSkillExtractor.supports_overlap is True


def test_as_skill_extractor_normalises_every_accepted_form():
    assert as_skill_extractor(None) is None
    assert isinstance(as_skill_extractor("rule_based"), RuleBasedSkillExtractor)
    own = Minimal()
    assert as_skill_extractor(own) is own
    wrapped = as_skill_extractor(lambda trajectories: [None] * len(trajectories))
    assert isinstance(wrapped, CallableSkillExtractor) and isinstance(wrapped, SkillExtractor)
    assert wrapped([trajectory(), trajectory()]) == [None, None]
    assert wrapped.supports_overlap is True and wrapped.pop_metrics() == {}
    wrapped.bind(object())  # a plain function has nothing to bind


def test_a_legacy_object_keeps_its_hooks():
    legacy = Legacy()
    extractor = as_skill_extractor(legacy)
    assert isinstance(extractor, CallableSkillExtractor) and extractor.wrapped is legacy
    assert extractor.supports_overlap is False
    trainer = object()
    extractor.bind(trainer)
    assert legacy.bound is trainer
    assert extractor([trajectory()]) == [None]
    assert extractor.pop_metrics() == {"calls": 1.0}


@pytest.mark.parametrize("bad", [42, {"name": "rule_based"}, ["rule_based"]])
def test_anything_else_is_a_type_error_naming_the_argument(bad):
    with pytest.raises(TypeError, match=r"skill_extractor must be a SkillExtractor, a callable .* or the name of "
                                        r"one \('openai', 'rule_based', 'scrambled', 'self', 'shuffled'\)"):
        as_skill_extractor(bad)


def test_unknown_names_are_named():
    with pytest.raises(ValueError, match="skill_extractor: unknown skill extractor 'oracle'"):
        make_skill_extractor("oracle")
    with pytest.raises(ValueError, match="unknown skill extractor"):
        as_skill_extractor("oracle")


def test_the_package_exports_the_protocol():
    assert opid_trl.SkillExtractor is SkillExtractor and opid_trl.as_skill_extractor is as_skill_extractor


def write_run_file(tmp_path, section):
    path = tmp_path / "run.yaml"
    path.write_text("model: smollm2-135m-instruct\n" + section)
    return path


def test_run_file_section_builds_the_extractor(tmp_path):
    from opid_trl.runs.run_config import build_skill_extractor, load_run_config

    run = load_run_config(write_run_file(tmp_path, "skill_extractor: {name: rule_based, kwargs: {repeat_threshold: 4}}\n"))
    extractor = build_skill_extractor(run)
    assert isinstance(extractor, RuleBasedSkillExtractor) and extractor.repeat_threshold == 4
    assert build_skill_extractor(load_run_config(write_run_file(tmp_path, "skill_extractor: {name: none}\n"))) is None


@pytest.mark.parametrize("section,field", [
    ("skill_extractor: {name: oracle}\n", "skill_extractor.name"),
    ("skill_extractor: {name: rule_based, kwargs: {colour: red}}\n", "skill_extractor.kwargs"),
    ("skill_extractor: {name: rule_based, kwargs: [1]}\n", "skill_extractor.kwargs"),
    ("skill_extractor: {nmae: rule_based}\n", "skill_extractor.nmae"),
    ("analyzer: {name: rule_based}\n", "analyzer: this section is now called 'skill_extractor'"),
])
def test_run_file_errors_name_the_field(tmp_path, section, field):
    from opid_trl.runs.run_config import ConfigError, build_skill_extractor, load_run_config

    with pytest.raises(ConfigError, match=field):
        build_skill_extractor(load_run_config(write_run_file(tmp_path, section)))
