import pytest

from pillow_env import Example, PromptRenderer
from pillow_env.prompts import ALPACA_HEADER

EX = [Example("Reverse the word.", "abc", "cba"), Example("Say hi.", "", "hi")]
Q = Example("Reverse the word.", "dog", "god")


def test_chat_template_puts_exemplars_in_prior_turns(tiny_backbone):
    text = PromptRenderer(tiny_backbone.tokenizer).render(EX, Q)
    assert text == ("<|im_start|>user\nReverse the word.\n\nabc<|im_end|>\n<|im_start|>assistant\ncba<|im_end|>\n"
                    "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n"
                    "<|im_start|>user\nReverse the word.\n\ndog<|im_end|>\n<|im_start|>assistant\n")


def test_alpaca_template_without_chat_template(tiny_alpaca_backbone):
    renderer = PromptRenderer(tiny_alpaca_backbone.tokenizer)
    assert not renderer.use_chat_template
    text = renderer.render(EX[:1], Q)
    assert text == (ALPACA_HEADER + "### Instruction:\nReverse the word.\n\n### Input:\nabc\n\n### Response:\ncba\n\n"
                    "### Instruction:\nReverse the word.\n\n### Input:\ndog\n\n### Response:\n")
    with pytest.raises(ValueError, match="no chat_template"):
        PromptRenderer(tiny_alpaca_backbone.tokenizer, use_chat_template=True)


def test_zero_shot_is_just_the_query(tiny_backbone):
    text = PromptRenderer(tiny_backbone.tokenizer).render([], Q)
    assert text == "<|im_start|>user\nReverse the word.\n\ndog<|im_end|>\n<|im_start|>assistant\n"


def test_long_exemplar_is_truncated_with_a_warning(tiny_backbone):
    long = Example("Copy.", "word " * 200, "done")
    renderer = PromptRenderer(tiny_backbone.tokenizer, max_exemplar_tokens=16)
    with pytest.warns(UserWarning, match=r"exemplar 0 \('Copy.'\) input has \d+ tokens; truncated"):
        text = renderer.render([long], Q)
    assert text.count("word") < 20
    assert "word " * 50 not in text


@pytest.mark.parametrize("chat", [True, False])
def test_render_pair_concatenates_to_full_conversation(chat, tiny_backbone, tiny_alpaca_backbone):
    tok = (tiny_backbone if chat else tiny_alpaca_backbone).tokenizer
    renderer = PromptRenderer(tok)
    prompt, completion = renderer.render_pair(EX, Q)
    assert prompt == renderer.render(EX, Q)
    assert completion.startswith("god") and completion.endswith(tok.eos_token + ("\n" if chat else ""))


def test_a_long_query_is_truncated_with_a_warning(tiny_backbone):
    import pytest

    from pillow_env import Example

    renderer = tiny_backbone.renderer
    renderer.max_query_tokens = 32
    huge = Example("Reverse the letters of this word.", "apple " * 200_000, "elppa")  # ~1.2 MB
    with pytest.warns(UserWarning, match=r"query \('Reverse the letters of this word.'\) input has \d+ tokens; "
                                         r"truncated to max_query_tokens=32"):
        prompt = renderer.render([], huge)
    assert len(renderer.tokenizer(prompt)["input_ids"]) < 80
    short = Example("Reverse the letters of this word.", "apple", "elppa")
    assert "apple" in renderer.render([], short) and renderer.messages([], short)[-1]["content"].endswith("apple")
