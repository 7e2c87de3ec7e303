"""Later stages never write into a config object: resolved values (the base folder, the tokenizer, the run's
examples) are returned. The one writer is `model.base.prepare_path`, for the training process's own config."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

ALLOWED = {("finetune/model/base.py", "prepare_path")}


def cfg_writes(path) -> dict[int, str]:
    """{line: innermost function} of every assignment into an attribute of a name ending in `cfg`
    (`train_cfg.model.path = ...`, `mcfg.path, x = ...`, `cfg.x += 1`)."""
    tree, found = ast.parse(path.read_text()), {}

    def targets(node):
        for t in getattr(node, "targets", None) or [node.target]:
            yield from (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])

    scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for scope in scopes:  # outer scopes first: an inner function's name overwrites its lines
        for node in ast.walk(scope):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                for t in targets(node):
                    root = t
                    while isinstance(root, ast.Attribute):
                        root = root.value
                    if t is not root and isinstance(root, ast.Name) and root.id.endswith("cfg"):
                        found[node.lineno] = getattr(scope, "name", "<module>")
    return found


def test_no_code_path_writes_into_a_config():
    writes = {
        (str(p.relative_to(ROOT)), fn, line)
        for p in sorted((ROOT / "finetune").rglob("*.py"))
        for line, fn in cfg_writes(p).items()
    }
    assert {(p, fn) for p, fn, _ in writes} <= ALLOWED, sorted(w for w in writes if w[:2] not in ALLOWED)
