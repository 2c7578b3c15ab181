"""The model card a run writes names what TRL cannot know: base model, method, environment, extractor."""

from datasets import Dataset

from opid_trl import OPIDTrainer
from opid_trl.reporting.model_card import base_model_name, complete_model_card, run_facts
from opid_trl.skills.extractors import RuleBasedSkillExtractor

from .conftest import tiny_config


def card_of(trainer) -> str:
    trainer.create_model_card()
    return open(f"{trainer.args.output_dir}/README.md").read()


def test_an_opid_run_card_names_the_base_model_method_environment_and_extractor(tiny_model_dir, tiny_tokenizer,
                                                                                 tmp_path):
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                          args=tiny_config(tmp_path, max_steps=1, skill_coef_step=0.5),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(4)]),
                          skill_extractor=RuleBasedSkillExtractor())
    card = card_of(trainer)
    assert "[None]" not in card
    folder = tiny_model_dir.rstrip("/").split("/")[-1]
    assert f"a fine-tuned version of `{folder}`" in card
    assert "- method: OPID\n" in card and "- environment: fetch\n" in card
    assert "- skill extractor: RuleBasedSkillExtractor\n" in card and "- lambda (episode, step): (0.001, 0.5)\n" in card
    assert tiny_model_dir not in card  # the folder by its name, no path of this machine
    trainer.create_model_card()  # written again (each checkpoint): one section, not two
    assert open(f"{trainer.args.output_dir}/README.md").read().count("## OPID setting") == 1


def test_a_run_without_skills_is_called_grpo(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                          args=tiny_config(tmp_path, max_steps=1),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(4)]))
    card = card_of(trainer)
    assert "- method: GRPO\n" in card and "- skill extractor: none\n" in card and "lambda" not in card


def test_card_completion_by_hand(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("This model is a fine-tuned version of [None](https://huggingface.co/None).\n")
    complete_model_card(card, run_facts("OPID", base_model_name("Qwen/Qwen2.5-3B-Instruct"), "webshop",
                                        "OpenAISkillExtractor", {}))
    assert card.read_text() == ("This model is a fine-tuned version of `Qwen/Qwen2.5-3B-Instruct`.\n\n"
                                "## OPID setting\n\n- method: OPID\n- base model: Qwen/Qwen2.5-3B-Instruct\n"
                                "- environment: webshop\n- skill extractor: OpenAISkillExtractor\n")
    assert base_model_name(str(tmp_path)) == tmp_path.name and base_model_name(None) is None


def test_a_described_base_model_is_named_as_given(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = OPIDTrainer(model=tiny_model_dir, processing_class=tiny_tokenizer, environment="fetch",
                          args=tiny_config(tmp_path, max_steps=1),
                          train_dataset=Dataset.from_list([{"seed": i} for i in range(4)]))
    trainer.base_model_description = "smollm2-135m-instruct, after the run's SFT warm start"
    card = card_of(trainer)
    assert "a fine-tuned version of `smollm2-135m-instruct, after the run's SFT warm start`" in card
