"""The Ollama Modelfile beside each GGUF: FROM, a TEMPLATE that renders Meta's Llama 2 chat format, the stop
sequences, the run's system prompt and the licence.

Ollama renders TEMPLATE with Go's text/template (data: .System, the system prompt, and .Messages, each with
.Role and .Content), then tokenizes the text with special tokens parsed, adding BOS itself (the GGUF says
add_bos_token). So the template writes exactly the text `chat_format.CHAT_TEMPLATE` renders without its
leading "<s>": "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] {user} [/INST]".
Two differences Go templates cannot avoid (Ollama offers no trim function): message text is not stripped of
leading/trailing whitespace as Meta's format does, and a system message given in the request replaces the
Modelfile's SYSTEM (Ollama's rule).
"""

from __future__ import annotations

from pathlib import Path

from finetune.config import UserError
from finetune.data import chat_format

# Role "system" messages are skipped in the loop whether or not Ollama's version leaves them in .Messages; the
# system prompt always comes from .System. `$first` marks the first user turn (it carries <<SYS>>, no <s>).
TEMPLATE = """{{- $first := true }}
{{- range .Messages }}
{{- if eq .Role "user" }}
{{- if not $first }}<s>{{ end }}[INST] {{ if and $first $.System }}<<SYS>>
{{ $.System }}
<</SYS>>

{{ end }}{{ .Content }} [/INST]
{{- $first = false }}
{{- else if eq .Role "assistant" }} {{ .Content }} </s>
{{- end }}
{{- end }}"""
# "</s>" is EOS (Ollama stops on the GGUF's EOS too); "[INST]" catches a model that runs on into a new turn.
STOP = ("</s>", "[INST]")


def quoted(text: str) -> str:
    """A Modelfile triple-quoted value; the format has no escape for a triple quote inside."""
    if '"""' in text:
        raise UserError(
            f'a Modelfile value cannot contain """ (the format has no escape for it): {text[:60]!r}; '
            "remove it from data.system_prompt"
        )
    return f'"""{text}"""'


def render(gguf_name: str, system: str | None, licence: str, context: int | None = None) -> str:
    """The Modelfile text for `./gguf_name`; `context` (the trained context) becomes num_ctx, so Ollama serves
    the whole of it (its own default is shorter)."""
    lines = [
        f"# Ollama: ollama create <name> -f {'Modelfile'} && ollama run <name>",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {quoted(TEMPLATE)}",
    ]
    lines += [f'PARAMETER stop "{s}"' for s in STOP]
    if context:
        lines.append(f"PARAMETER num_ctx {int(context)}")
    if system and system.strip():
        lines.append(f"SYSTEM {quoted(system.strip())}")
    lines.append(f"LICENSE {quoted(licence.strip())}")
    return "\n".join(lines) + "\n"


def write(folder: Path, gguf_name: str, system: str | None, licence_file: Path, context: int | None = None) -> Path:
    """`folder/Modelfile.<type>` beside `folder/gguf_name` (`<run>.<type>.gguf`)."""
    licence = licence_file.read_text() if licence_file.is_file() else "Llama 2 Community License"
    out = Path(folder) / f"Modelfile.{gguf_name.rsplit('.', 2)[-2]}"
    out.write_text(render(gguf_name, system, licence, context).replace("-f Modelfile", f"-f {out.name}"))
    return out


def expected_text(messages: list[dict]) -> str:
    """What the TEMPLATE must render for `messages` (ending with a user turn): CHAT_TEMPLATE's text without the
    leading BOS, i.e. Meta's format for messages that carry no leading/trailing whitespace."""
    import jinja2

    text = (
        jinja2.Environment()
        .from_string(chat_format.CHAT_TEMPLATE)
        .render(messages=messages, bos_token="<s>", eos_token="</s>")
    )
    return text.removeprefix("<s>")
