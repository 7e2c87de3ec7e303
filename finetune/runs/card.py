"""README.md model cards for adapter/ and merged/: Hub metadata, how it was trained, how to load it.

Built from the run directory alone (config.yaml, metrics.jsonl), so `export.py` can rewrite a card long after
training. A base model given as a local folder is common (and crashes peers' card writers): the metadata then
names the Hub id only when one is known (`model=llama2_13b model.path=/models/...` is a local copy of
meta-llama/Llama-2-13b-hf), and the body names the folder. A card is published: it shows no absolute local path
(paths relative to the run or to the toolkit's checkout, else `.../<last part>`), so the author's directory layout
stays home.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from finetune.benchmarks import report as benchmarks
from finetune.config import CONFIGS_DIR, ROOT, TrainConfig, flatten, looks_local, rope
from finetune.config.methods import METHODS
from finetune.data import chat_format
from finetune.runs import metrics
from finetune.runs.rundir import run_config
from finetune.runtime import files


@dataclass
class Base:
    hub_id: str | None  # for the `base_model` metadata; None when the base exists only as a local folder
    path: str  # what training loaded
    note: str  # one line for the card


def base_of(cfg: TrainConfig, adapter_dir: Path | None = None) -> Base:
    """Which base the run trained on, with the Hub id when there is one."""
    path = cfg.model.path
    if adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file():
        path = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path") or path
    if cfg.model.random_init:
        return Base(
            None,
            path,
            f"a randomly initialised Llama 2 architecture ({cfg.model.name}, seed "
            f"{cfg.model.seed}): a toy for demos and tests, not a language model",
        )
    if not looks_local(path):
        return Base(path, path, f"[{path}](https://huggingface.co/{path})")
    named = CONFIGS_DIR / "model" / f"{cfg.model.name}.yaml"
    hub = OmegaConf.load(named).get("path") if named.is_file() else None
    if hub and not looks_local(str(hub)):
        return Base(str(hub), path, f"[{hub}](https://huggingface.co/{hub}), loaded from the local copy `{path}`")
    return Base(None, path, f"the local checkpoint `{path}` (no Hub id known)")


# the card's result table: metrics.jsonl key, label
RESULTS = (
    ("loss", "final train loss"),
    ("eval_loss", "final eval loss"),
    ("step", "steps"),
    ("train_runtime", "train runtime (s)"),
)


def final_metrics(run_dir: Path) -> dict:
    """Last train loss, last eval loss, steps and runtime from metrics.jsonl (empty when there is none)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = metrics.read(path) if path.is_file() else []
    out: dict = {}
    for row in rows:
        for key in ("loss", "eval_loss", "train_loss", "train_runtime", "step", "epoch"):
            if row.get(key) is not None:
                out[key] = row[key]
    return out


def gguf_types(run_dir: Path | None) -> list[str]:
    """The types of the GGUF files export.py verified in <run>/gguf (its verification.json)."""
    path = Path(run_dir or ".") / "gguf" / "verification.json"
    return sorted({f["type"] for f in json.loads(path.read_text())["files"].values()}) if path.is_file() else []


def variants(cfg: TrainConfig, adapter_dir: Path | None = None) -> list[tuple[str, str]]:
    """(tag, description) of each LoRA variant and training addition the run used; DoRA and rsLoRA as the saved
    adapter_config.json says (an init_adapter keeps its own)."""
    saved = {}
    if adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file():
        saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    lora, trainer, out = cfg.lora, cfg.trainer, []
    if saved.get("use_dora", lora.use_dora):
        out.append(("dora", "DoRA (a trained magnitude per output row)"))
    if saved.get("use_rslora", lora.use_rslora):
        out.append(("rslora", "rsLoRA (scale alpha/sqrt(r))"))
    if lora.init in ("pissa", "olora"):
        name = {"pissa": "PiSSA", "olora": "OLoRA"}[lora.init]
        out.append(
            (lora.init, f"{name} initialisation, saved converted to a plain LoRA of rank 2r on the original base")
        )
    elif lora.init != "default":
        text = "LoftQ initialisation over the 4-bit base" if lora.init == "loftq" else "gaussian init"
        out.append((lora.init, text))
    if trainer.loraplus_lr_ratio is not None:
        out.append(("loraplus", f"LoRA+ (lora_B learning rate x{trainer.loraplus_lr_ratio:g})"))
    if trainer.neftune_alpha is not None:
        out.append(("neftune", f"NEFTune (noise alpha {trainer.neftune_alpha:g})"))
    if lora.train_embeddings_and_norms or saved.get("modules_to_save"):
        out.append(("longlora", "LongLoRA's trainable input embeddings and norms"))
    return out


def metadata(cfg: TrainConfig, base: Base, kind: str, run_dir: Path | None = None) -> dict:
    method = "qlora" if cfg.quant.mode in ("nf4", "fp4") else "lora"
    tags = ["llama-2", method, cfg.trainer.kind, *(tag for tag, _ in variants(cfg)), "trl", "finetune-llama2"]
    if kind == "adapter":
        tags.append("peft")
        if base.hub_id:
            tags.append(f"base_model:adapter:{base.hub_id}")
    if kind == "gguf":  # the Hub lists a repository with .gguf files and these tags as a GGUF repository
        tags += ["gguf", "llama.cpp", "ollama", *gguf_types(run_dir)]
    meta = {
        "license": "llama2",
        "library_name": {"adapter": "peft", "gguf": "gguf"}.get(kind, "transformers"),
        "pipeline_tag": "text-generation",
        "tags": tags,
    }
    if kind == "gguf":
        meta["quantization"] = gguf_types(run_dir)
    if base.hub_id:
        meta["base_model"] = base.hub_id
    if not looks_local(cfg.data.path):
        meta["datasets"] = [cfg.data.path]
    if run_dir is not None and kind != "gguf":  # lm_eval scores from evaluate.py benchmarks=[...]: model-index
        meta.update(benchmarks.card_metadata(Path(run_dir), Path(run_dir).name))
    return meta


TEMPLATE = Path(__file__).with_name("card.md")  # the card's words, a Jinja template (shipped as package data)


def render(run_dir: Path, kind: str, merge_section: str = "", adapter_dir: Path | None = None) -> str:
    """The README.md text (front matter + body) for `kind` = adapter | merged | gguf."""
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    base = base_of(cfg, adapter_dir or run_dir / "adapter")
    final = final_metrics(run_dir)
    card = ModelCard.from_template(
        ModelCardData(**metadata(cfg, base, kind, run_dir)),
        template_path=str(TEMPLATE),
        kind=kind,
        cfg=cfg,
        run_name=run_dir.name,
        base=base,
        method=METHODS[cfg.trainer.kind],
        context=rope.describe(cfg.model),
        variants=[text for _, text in variants(cfg, adapter_dir or run_dir / "adapter")],
        results=[(label, final.get(key, "n/a")) for key, label in RESULTS],
        merge_section=merge_section,
        benchmarks=(section + "\n") if kind != "gguf" and (section := benchmarks.card_section(run_dir)) else "",
        prompt=prompt_example(cfg.data.system_prompt),
        base_ref=base.hub_id or f"path/to/{Path(base.path).name}",
        quantization_config=quant_snippet(cfg),
        config_yaml=(run_dir / "config.yaml").read_text().rstrip(),
    )
    return ModelCard(without_local_paths(card.content, run_dir)).content


def prompt_example(system: str | None) -> str:
    """The Llama 2 chat format as text, for the card (the ids come from `chat_format`)."""
    user = "What is the capital of France?"
    if system:
        user = chat_format.B_SYS + system + chat_format.E_SYS + user
    return f"<s>{chat_format.B_INST} {user} {chat_format.E_INST} The capital of France is Paris. </s>"


def quant_snippet(cfg: TrainConfig) -> str | None:
    """The BitsAndBytesConfig(...) source of the run's quantized base (model.base.bnb_config's settings); None for
    a 16-bit base."""
    quant = cfg.quant
    if quant.mode == "none":
        return None
    if quant.mode == "int8":
        return "BitsAndBytesConfig(load_in_8bit=True)"
    storage = f", bnb_4bit_quant_storage=torch.{quant.storage_dtype}" if quant.storage_dtype else ""
    return (
        f'BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="{quant.mode}", bnb_4bit_use_double_quant='
        f"{bool(quant.double_quant)}, bnb_4bit_compute_dtype=torch.{cfg.model.dtype}{storage})"
    )


def is_absolute(value) -> bool:
    return isinstance(value, str) and (value.startswith(("/", "~")) or value[1:3] in (":\\", ":/"))


def shown_path(value: str, run_dir: Path) -> str:
    """A local path as a card shows it: relative to the run, else to the toolkit's checkout, else `.../name`."""
    path = Path(value).expanduser()
    for root in (Path(run_dir), ROOT):
        for a, b in ((path, root), (path.resolve(), root.resolve())):
            try:
                return a.relative_to(b).as_posix()
            except ValueError:
                continue
    return f".../{path.name}"


def without_local_paths(text: str, run_dir: Path) -> str:
    """`text` with every absolute path of the run's config (data, base model, tokenizer, output_dir), the run's
    own and the checkout's replaced by `shown_path` (longest first, so a folder's files keep their tail)."""
    stored = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml"), resolve=False)
    paths = {v for _, v in flatten(stored) if is_absolute(v)} | {str(Path(run_dir).resolve()), str(ROOT)}
    for value in sorted(paths, key=len, reverse=True):
        text = text.replace(value, shown_path(value, run_dir))
    return text


def write(folder: Path, run_dir: Path, kind: str, merge_section: str = "") -> Path:
    """Write `folder/README.md`; returns its path."""
    text = render(run_dir, kind, merge_section, adapter_dir=Path(folder) if kind == "adapter" else None)
    return files.write_text(Path(folder) / "README.md", text)
