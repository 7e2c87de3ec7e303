"""One record per training method (`trainer.kind`): what every stage needs to know about it, in one place.

Each table in the toolkit reads these records instead of listing the kinds itself: the spellings `trainer.kind`
allows (config.choices), the data encoder (data.build), the trainer module (training.kinds), the model card's
words (runs.card), the planner's terms (planning.methods), the checks the config alone shows (`check`, run by
training.checks) and the entry points' branches (train, preview, evaluate). A new method is one record here plus
its trainer module finetune/training/<trainer>.py, with `check(cfg) -> list[str]` and
`build(cfg, model, tokenizer, prepared, run_dir)`; tests/unit/test_methods.py fails until every table covers it.
The records name modules, never import them: this package sits below every stage.
"""

from __future__ import annotations

from dataclasses import dataclass

# trainer keys a TRL trainer reads only when we wire them in, and why a method that does not would misbehave
WIRED = {
    "packing": "{title}'s TRL trainer takes padded sequences from our collator, never packed ones",
    "liger": "the Liger kernels are wired into SFT only; {title} would run without them",
    "activation_offloading": "activation offloading is wired into SFT only; {title} would keep activations",
}


@dataclass(frozen=True)
class Method:
    name: str  # the `trainer.kind` spelling
    title: str  # how the model card and messages name it
    trl_trainer: str  # the TRL trainer that runs it, as the model card says it
    trainer: str  # its module under finetune/training/ (check and build)
    encoder: str  # its data encoder under finetune/data/: sft (conversations), pairs, unpaired
    data: str  # what its examples are, in words
    sequences: int  # sequences one example puts in a micro-batch: 2 for chosen + rejected
    reference: bool  # TRL scores a reference: a frozen copy of the starting adapter on the same base
    no_grad_passes: int  # forward passes without gradients per step, besides the policy's own
    precomputable: bool  # trainer.precompute_ref=true takes those passes out of training (one pass before it)
    token_nll: bool  # its loss is a mean token NLL, so exp(loss) is a perplexity
    packing: str  # what trainer.packing=true does: "trl" (TRL packs), "padding_free" (one row per micro-batch), ""
    wired: tuple[str, ...] = ()  # keys of WIRED besides packing its trainer reads; the others are refused when set
    logs: tuple[str, ...] = ()  # metrics its TRL trainer logs besides the Trainer's own (a sweep's metric is checked)

    @property
    def conversations(self) -> bool:
        """Its examples are conversations (SFT's), not a prompt with answers (preference data)."""
        return self.encoder == "sft"


# what every preference trainer of TRL logs per step (and with eval_ per evaluation)
PAIR_LOGS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "logits/chosen",
    "logits/rejected",
)

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "sft",
            "SFT",
            "SFT",
            trainer="sft",
            encoder="sft",
            data="conversations",
            sequences=1,
            reference=False,
            no_grad_passes=0,
            precomputable=False,
            token_nll=True,
            packing="trl",
            wired=("liger", "activation_offloading"),
            logs=("mean_token_accuracy",),
        ),
        Method(
            "dpo",
            "DPO",
            "DPO",
            trainer="dpo",
            encoder="pairs",
            data="preference examples",
            sequences=2,
            reference=True,
            no_grad_passes=1,
            precomputable=True,
            token_nll=False,
            packing="padding_free",
            logs=PAIR_LOGS,
        ),
        # reference-free: odds ratio + NLL
        Method(
            "orpo",
            "ORPO",
            "ORPO",
            trainer="orpo",
            encoder="pairs",
            data="preference examples",
            sequences=2,
            reference=False,
            no_grad_passes=0,
            precomputable=False,
            token_nll=False,
            packing="",
            logs=PAIR_LOGS + ("nll_loss", "log_odds_ratio", "log_odds_chosen"),
        ),
        # reference-free: length-normalised margin (CPOTrainer with loss_type=simpo)
        Method(
            "simpo",
            "SimPO",
            "CPO (loss simpo)",
            trainer="simpo",
            encoder="pairs",
            data="preference examples",
            sequences=2,
            reference=False,
            no_grad_passes=0,
            precomputable=False,
            token_nll=False,
            packing="",
            logs=PAIR_LOGS + ("nll_loss",),
        ),
        # unpaired thumbs-up/down answers; no_grad_passes: the reference over the answers and over the mismatched KL
        # answers, and the policy over the KL answers
        Method(
            "kto",
            "KTO",
            "KTO",
            trainer="kto",
            encoder="unpaired",
            data="preference examples",
            sequences=1,
            reference=True,
            no_grad_passes=3,
            precomputable=False,
            token_nll=False,
            packing="",
            logs=PAIR_LOGS + ("kl",),
        ),
    )
}


def names(pred=lambda m: True) -> list[str]:
    """The methods whose record satisfies `pred`, in the records' order."""
    return [name for name, m in METHODS.items() if pred(m)]


def check(cfg) -> list[str]:
    """Problems the method's record shows in a config: a `data.max_prompt_length` that leaves no room for an
    answer (methods whose examples are a prompt and answers), and trainer keys its trainer would ignore."""
    method = METHODS.get(cfg.trainer.kind)
    if method is None:  # config.check names the unknown kind
        return []
    problems, data = [], cfg.data
    if not method.conversations and data.max_prompt_length is not None and data.max_prompt_length >= data.max_length:
        problems.append(
            f"data.max_prompt_length={data.max_prompt_length} leaves no room for an answer in "
            f"data.max_length={data.max_length}; lower it or raise data.max_length"
        )
    wired = {*method.wired, *(["packing"] if method.packing else [])}
    for key, why in WIRED.items():
        if key not in wired and getattr(cfg.trainer, key):
            problems.append(
                f"trainer.{key}=true with trainer.kind={method.name}: {why.format(title=method.title)}; "
                f"set trainer.{key}=false"
            )
    return problems
