"""The Llama 2 chat format, token for token against Meta's reference rule computed here with SentencePiece alone."""

from __future__ import annotations

import re

import jinja2
import pytest
import sentencepiece as spm

from tests.conftest import ROOT
from finetune.data import chat_format
from finetune.data.chat_format import DialogError, encode_dialog, encode_prompt

SP = spm.SentencePieceProcessor(model_file=str(ROOT / "data/llama2-tokenizer/tokenizer.model"))
SYSTEM = "You are a terse assistant.  Answer in one line."
DIALOG = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is  2+2?\n(show work)"},  # a run of spaces and a newline: HF fast differs here
    {"role": "assistant", "content": "  4, because 2+2 = 4. "},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6"},
]


def meta_reference(dialog: list[dict]) -> list[int]:
    """Meta's `chat_completion` (llama/generation.py), transcribed: ids for a dialog ending with a user turn,
    or for every finished turn when it ends with an assistant answer (the training sequence)."""
    if dialog[0]["role"] == "system":
        system, first = dialog[0]["content"], dialog[1]
        dialog = [{"role": first["role"], "content": f"<<SYS>>\n{system}\n<</SYS>>\n\n{first['content']}"}] + dialog[2:]
    tokens = sum(
        [
            [1] + SP.encode(f"[INST] {(p['content']).strip()} [/INST] {(a['content']).strip()} ") + [2]
            for p, a in zip(dialog[::2], dialog[1::2])
        ],
        [],
    )
    if dialog[-1]["role"] == "user":
        tokens += [1] + SP.encode(f"[INST] {(dialog[-1]['content']).strip()} [/INST]")
    return tokens


def test_known_ids_of_a_single_turn_prompt():
    # BOS, "▁[", "INST", "]", "▁hi", "▁[", "/", "INST", "]": the text "[INST]" is not a special token in Llama 2
    assert encode_prompt(SP, [{"role": "user", "content": "hi"}]) == [
        1,
        518,
        25580,
        29962,
        7251,
        518,
        29914,
        25580,
        29962,
    ]
    ids, mask = encode_dialog(SP, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}])
    assert ids == [1, 518, 25580, 29962, 7251, 518, 29914, 25580, 29962, 15043, 29871, 2]  # "▁Hello", "▁", EOS
    assert mask == [0] * 9 + [1, 1, 1]


@pytest.mark.parametrize(
    "dialog", [DIALOG[1:3], DIALOG[:3], DIALOG[1:], DIALOG], ids=["single", "system", "multi", "multi+system"]
)
def test_training_ids_equal_meta_per_turn_encoding(dialog):
    assert encode_dialog(SP, dialog)[0] == meta_reference(dialog)


@pytest.mark.parametrize("n", [2, 4], ids=["first turn", "second turn"])
def test_inference_prompt_equals_meta_and_is_the_training_prefix(n):
    prompt = encode_prompt(SP, DIALOG[:n])
    assert prompt == meta_reference(DIALOG[:n])
    ids, mask = encode_dialog(SP, DIALOG[: n + 1])
    assert ids[: len(prompt)] == prompt
    assert mask[len(prompt) - 1] == 0 and mask[len(prompt)] == 1, "training starts right after the prompt"


def test_labels_are_each_answer_its_space_and_eos_and_nothing_else():
    ids, mask = encode_dialog(SP, DIALOG)
    trained = [t for t, m in zip(ids, mask) if m]
    answers = [SP.encode("4, because 2+2 = 4. "), SP.encode("6 ")]  # answers as Meta encodes them, space included
    assert trained == answers[0] + [2] + answers[1] + [2]
    assert ids.count(1) == 2 and ids[0] == 1, "one BOS id per turn"
    masked = SP.decode([t for t, m in zip(ids, mask) if not m])
    assert masked.count("[INST]") == 2 and SYSTEM in masked and "And 3+3?" in masked, "system and users masked"


def test_train_on_last_masks_earlier_answers():
    ids, mask = encode_dialog(SP, DIALOG, train_on="last")
    assert [t for t, m in zip(ids, mask) if m] == SP.encode("6 ") + [2]


def test_every_bundled_oasst_conversation_is_meta_exact():
    from finetune.data import adapters, sources

    convs = [
        ex["messages"]
        for rec, _ in sources.read_records(str(ROOT / "data/sft/oasst-en100/en_100_tree.jsonl"))
        for ex in adapters.oasst(rec, {})
    ]
    assert len(convs) == 100 and sum(len(c) > 2 for c in convs) >= 20
    for conv in convs:
        assert encode_dialog(SP, conv)[0] == meta_reference(conv)
        assert encode_prompt(SP, conv[:-1]) == meta_reference(conv[:-1])


def test_hf_chat_template_renders_metas_text():
    text = (
        jinja2.Environment()
        .from_string(chat_format.CHAT_TEMPLATE)
        .render(messages=DIALOG, bos_token="<s>", eos_token="</s>")
    )
    sys_user = "<<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\n" + DIALOG[1]["content"]
    assert text == (f"<s>[INST] {sys_user.strip()} [/INST] 4, because 2+2 = 4. </s><s>[INST] And 3+3? [/INST] 6 </s>")


@pytest.mark.parametrize(
    "dialog, message",
    [
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            "message 1 has role 'user', expected 'assistant'",
        ),
        ([{"role": "user", "content": "a"}], "a training conversation must end with an assistant answer"),
        ([{"role": "system", "content": "s"}], "a system message must be followed by a user message"),
        ([{"role": "assistant", "content": "a"}], "message 0 has role 'assistant', expected 'user'"),
        ([{"role": "user", "content": None}], "message 0 is not {'role': ..., 'content': <text>}"),
    ],
)
def test_malformed_dialogs_are_refused(dialog, message):
    with pytest.raises(DialogError, match=re.escape(message)):
        encode_dialog(SP, dialog)


def test_a_prompt_must_end_with_a_user_turn():
    with pytest.raises(DialogError, match="a prompt must end with a user message"):
        encode_prompt(SP, DIALOG)


def whole_turn_reference(sp, user: str, answer: str) -> tuple[list[int], int]:
    """The turn encoded as one string and its trained part after the longest prefix it shares with the prompt's
    ids alone: the rule `_turn` follows whatever the vocabulary."""
    prompt = [1] + sp.encode(f"[INST] {user.strip()} [/INST]")
    full = [1] + sp.encode(f"[INST] {user.strip()} [/INST] {answer.strip()} ") + [2]
    n = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), len(prompt))
    return full, n


def adversarial_texts(count: int, seed: int = 0) -> list[str]:
    """Spaces and their runs, newlines, tabs, U+2581 itself, "]" and "[/INST]", no-break spaces, combining
    marks, CJK, emoji (byte fallback), digits: what could make a piece span the space before an answer."""
    import random

    rng = random.Random(seed)
    parts = [
        " ",
        "  ",
        "   ",
        "\n",
        "\t",
        "▁",
        "▁▁",
        "]",
        "[/INST]",
        "\u00a0",
        "e\u0301",
        "\u0301",
        "日本語",
        "🙂",
        "12",
        "the",
        "ok.",
        "<s>",
        "</s>",
        "\\",
        "x",
    ]
    return ["".join(rng.choice(parts) for _ in range(rng.randint(1, 12))) for _ in range(count)]


def test_a_turn_encoded_in_two_parts_equals_the_whole_turn():
    """Data prep encodes the prompt and the answer apart (each text once); the ids and the trained part must be
    those of the whole turn encoded at once, on adversarial text too."""
    assert chat_format.splits_at_spaces(SP)
    texts = [t for t in adversarial_texts(1200) if t.strip()]
    for user, answer in zip(texts[::2], texts[1::2]):
        assert chat_format._turn(SP, user, answer) == whole_turn_reference(SP, user, answer), (user, answer)


def test_a_vocabulary_with_pieces_across_spaces_encodes_whole_turns(tmp_path):
    """A tokenizer.model with a piece holding "▁" after another character (not Llama 2's): the two-part
    shortcut could split that piece, so the turn is encoded whole."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString((ROOT / "data/llama2-tokenizer/tokenizer.model").read_bytes())
    piece = proto.pieces.add()
    piece.piece, piece.score = "]▁ok", 0.0  # outscores every merge: "] ok" becomes one piece
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    assert not chat_format.splits_at_spaces(sp)
    ids, n = chat_format._turn(sp, "fine [/INST]", "ok then")
    assert (ids, n) == whole_turn_reference(sp, "fine [/INST]", "ok then")
    assert sp.piece_to_id("]▁ok") in ids and n < len([1] + sp.encode("[INST] fine [/INST] [/INST]"))
