"""The README's two set-up commands are the ones CI and users run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    blocks, inside = [], None
    for line in text.splitlines():
        if line.strip() == "```bash":
            inside = []
        elif line.strip() == "```" and inside is not None:
            blocks.append("\n".join(inside))
            inside = None
        elif inside is not None:
            inside.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    setup = _bash_blocks(readme)[:2]
    assert len(setup) == 2 and all(len(b.splitlines()) == 1 for b in setup)
    assert setup[1] in (ROOT / ".ci" / "run").read_text()
    assert setup[0].startswith("pip install -e . && denoisefeat ")
