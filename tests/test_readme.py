"""The README's library example must run as written and produce a valid proof."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_recorder_example_runs_and_verifies(tmp_path, monkeypatch, capsys):
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    assert ns["report"].valid
    assert all(s.exact for s in ns["report"].segments)
    assert capsys.readouterr().out.strip().startswith("valid")


def test_readme_fit_example_runs_and_verifies(tmp_path, monkeypatch, capsys):
    """The `fit` example (the second python block) runs as written after the first one, whose
    names (X, Y, arch, mlp, ModelSpec, verify) it uses, and its proof verifies."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    fit_blocks = [b for b in blocks if re.search(r"(?<![.\w])fit\(", b)]  # not trainer.fit(
    assert len(fit_blocks) == 1 and "model_spec=..." not in fit_blocks[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)
    capsys.readouterr()
    exec(compile(fit_blocks[0], "README.md", "exec"), ns)
    assert ns["result"].proof.exists()
    assert capsys.readouterr().out.strip() == "valid"


def test_readme_quickstart_has_two_commands():
    text = README.read_text()
    quick = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    cmds = re.findall(r"```bash\n(.*?)```", quick, re.S)
    assert len(cmds) == 2
    assert "pol demo" in cmds[0] and "pytest" in cmds[1]


def test_readme_attach_example_runs_and_verifies(tmp_path, monkeypatch, capsys):
    """The `attach` example runs as written after the first block (X, Y, arch, mlp, ModelSpec,
    verify), and its proof verifies."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    attach_blocks = [b for b in blocks if "attach(" in b]
    assert len(attach_blocks) == 1
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)
    capsys.readouterr()
    exec(compile(attach_blocks[0], "README.md", "exec"), ns)
    assert capsys.readouterr().out.strip() == "True valid"
    assert ns["opt"].recorder.spec.step.clip_grad_norm == 1.0
