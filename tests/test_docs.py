"""Every train.py / sample.py command in README.md and docs/*.md composes and passes the input checks, so none
goes stale (the cheap half of running them; the tests elsewhere run each kind of command end to end)."""
import re
import shlex

import pytest
import torch

from conftest import ROOT, compose_config
from draw.config import validate_train_config
from draw.run import compose_config as compose_any

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def documented_commands():
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split("#")[0].strip()
                if command.startswith(("python train.py", "python sample.py")):
                    yield pytest.param(command, id=f"{page.name}: {command}")


@pytest.mark.parametrize("command", list(documented_commands()))
def test_documented_command_composes(command):
    script, *words = shlex.split(command)[1:]
    # Flags, Hydra's own keys, and a bare word the reader replaces (OVERRIDES) are not config overrides.
    overrides = [w for w in words if "=" in w and not w.startswith("hydra")]
    # Placeholders a reader fills in (RUN, PATH, DATE/TIME, /path/to/...) stand for a path.
    overrides = [re.sub(r"=.*(RUN|PATH|DATE|/path/to).*", "=placeholder", w) for w in overrides]
    # A sweep's comma list: each value must compose; the first stands for them all here ({...} and [...] are one value).
    single = []
    for w in overrides:
        key, value = w.split("=", 1)
        single.append(f"{key}={value.split(',')[0]}" if not value.startswith(("[", "{")) else w)
    if script == "sample.py":
        compose_any(single, config_name="sample")
        return
    cfg = compose_config(*[w for w in single if not w.startswith("ckpt_path=")])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        return  # composes; the input checks would rightly say there is no GPU here
    validate_train_config(cfg)


def test_the_docs_hold_commands_to_check():
    assert len(list(documented_commands())) >= 15


def test_every_relative_link_in_the_docs_resolves():
    broken = [(page.name, link) for page in PAGES
              for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text())
              if not link.startswith("http") and not (page.parent / link).exists()]
    assert broken == []
