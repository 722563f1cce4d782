"""The package's dependency rules (DESIGN.md section 5) and the generated key reference, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from dist_seg.config import reference

PACKAGE = Path(__file__).resolve().parents[2] / "dist_seg"
# The command-line layer: entry points and their shared plumbing. Only they may import cli_common.
CLI_LAYER = {"cli", "cli_common", "train.cli", "train.__main__", "prepare", "validate", "evaluate", "predict",
             "export", "synth.cli", "synth.__main__", "telemetry.gpu_proc_sampler", "config.reference"}


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports_of(path: Path) -> set[str]:
    """Every dist_seg module (relative to the package) that ``path`` imports, at any depth of the file."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif node.module and node.module.split(".")[0] in ("dist_seg", "benchmarks"):
                names = [node.module]
            else:
                continue
            found.update(n.removeprefix("dist_seg.").lstrip(".") for n in names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("dist_seg.") for a in node.names if a.name.split(".")[0] in
                         ("dist_seg", "benchmarks"))
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _violations(owners: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for name, path in MODULES.items():
        if name == owners or name.startswith(owners + "."):
            for target in imports_of(path):
                if any(target == f or target.startswith(f + ".") for f in forbidden):
                    bad.append(f"{name} imports {target}")
    return bad


@pytest.mark.parametrize("owner, forbidden", [
    ("config", ("data", "telemetry", "train", "eval", "models", "deploy", "runtime", "synth")),
    ("eval", ("train",)),
    ("data", ("train", "eval", "deploy", "models")),
    ("models", ("train", "eval", "deploy")),
    ("runtime", ("train", "eval", "deploy")),
    ("telemetry", ("train", "eval", "deploy", "data", "models")),
    ("deploy", ("train",)),
])
def test_dependencies_point_one_way(owner, forbidden):
    assert _violations(owner, forbidden) == []


def test_nothing_in_the_package_imports_benchmarks_or_the_cli_layer_outside_it():
    bad = []
    for name, path in MODULES.items():
        for target in imports_of(path):
            if target.startswith("benchmarks"):
                bad.append(f"{name} imports {target}")
            if target in ("cli_common", "cli") and name not in CLI_LAYER:
                bad.append(f"{name} imports {target}")
    assert bad == []


def test_the_rule_checker_sees_relative_imports(tmp_path):
    # A checker that cannot see an import proves nothing: feed it one of each kind.
    sample = PACKAGE / "eval" / "report.py"
    assert "atomic" in imports_of(sample) and any(t.startswith("eval.") for t in imports_of(sample))


def test_key_reference_page_is_generated_from_the_schema():
    assert reference.main(["--check"]) == 0, "run: python -m dist_seg.config.reference"


def test_key_reference_check_fails_when_the_page_drifts(tmp_path, capsys):
    page = tmp_path / "ref.md"
    page.write_text(reference.render().replace("Epochs to train", "Epochs to trian"), encoding="utf-8")
    assert reference.main(["--check", "--out", str(page)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_every_key_has_a_docstring_and_a_default():
    docs = list(reference.key_docs())
    assert len(docs) > 80
    assert [d.key for d in docs if not d.doc] == []
    by_key = {d.key: d for d in docs}
    assert by_key["training.batch_size"].default == "`4`" and by_key["dataset.root"].default == "required"
    assert by_key["training.image_size"].default == "`[512, 512]`"


def test_ruff_check_is_clean():
    """The linter configured in pyproject.toml (pyflakes, pycodestyle, isort, bugbear, pyupgrade) finds nothing."""
    repo = PACKAGE.parent
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(repo)], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
