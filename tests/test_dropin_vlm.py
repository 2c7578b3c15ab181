"""A vision-language GRPO pipeline (image + text prompts) trains OPIDTrainer exactly like GRPOTrainer.

The model is a tiny random Qwen2-VL built from a config, with the tiny BPE tokenizer extended by Qwen2-VL's
vision tokens and a processor assembled from the PIL image processor, so nothing is downloaded. transformers'
`Qwen2VLProcessor` also requires a video processor, which needs torchvision (not installed beside CPU torch
here); the image-only subclass below drops that one sub-processor, and images need nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from transformers import ProcessorMixin, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from opid_trl.testing import build_tiny_tokenizer

from .test_dropin import assert_same_training, grpo_args, length_reward, train_pair

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
#: Qwen2-VL's chat template, reduced to what image prompts use.
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` without its video processor (the only part that needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def tiny_processor() -> ImageOnlyQwen2VLProcessor:
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tokenizer.chat_template = QWEN2_VL_TEMPLATE
    # 56x56 images: 4x4 patches of 14 pixels, merged 2x2 into 4 image tokens
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=QWEN2_VL_TEMPLATE)


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory) -> str:
    """A 2-layer Qwen2-VL (1-block vision tower) sized to the tiny tokenizer, saved once."""
    tokenizer = tiny_processor().tokenizer
    start, end, image, video = tokenizer.convert_tokens_to_ids(VISION_TOKENS)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        vision_start_token_id=start, vision_end_token_id=end, image_token_id=image, video_token_id=video,
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    directory = Path(tmp_path_factory.mktemp("tiny-vlm"))
    model.save_pretrained(directory)
    return str(directory)


def image_rows(n: int = 8) -> Dataset:
    rng = np.random.RandomState(0)
    return Dataset.from_list([
        {"image": Image.fromarray(rng.randint(0, 255, (56, 56, 3), dtype=np.uint8)),
         "prompt": [{"role": "user", "content": f"Describe picture {i}."}]}
        for i in range(n)
    ])


@pytest.mark.parametrize("rows", [4, 12], ids=["rows4", "rows12_above_max_rows_per_forward"])
def test_vision_language_model(tiny_vlm_dir, tmp_path, rows):
    def build(name: str) -> dict[str, Any]:
        args = grpo_args(tmp_path, name, per_device_train_batch_size=rows, num_generations=rows // 2 if rows > 4 else 2,
                         beta=0.02, num_iterations=2)
        return dict(model=tiny_vlm_dir, reward_funcs=length_reward, args=args, train_dataset=image_rows(),
                    processing_class=tiny_processor())

    grpo, opid = train_pair(build)
    assert opid.trainer._is_vlm
    # image inputs (pixel_values, image_grid_thw) are not split by OPIDTrainer's chunked pass: GRPO's own loss runs
    assert opid.grad_forward_rows == grpo.grad_forward_rows
    assert_same_training(grpo, opid)
    assert any("visual" in name for name in opid.weights)
    moved = [n for n in opid.weights if "visual" in n and not torch.equal(opid.initial[n], opid.weights[n])]
    assert moved, "the vision tower got no gradient: the images did not reach the loss"
