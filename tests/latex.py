"""Compile generated .tex files the way a user \\inputs them: a minimal document whose preamble has only
booktabs. pdflatex comes with `apt-get install texlive-latex-recommended` (CI installs it and sets
ABSVIT_REQUIRE_LATEX=1, so that there this check runs instead of skipping)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PREAMBLE = r"\documentclass{article}" "\n" r"\usepackage{booktabs}" "\n"


def require_pdflatex() -> str:
    exe = shutil.which("pdflatex")
    if exe is None:
        if os.environ.get("ABSVIT_REQUIRE_LATEX") == "1":
            pytest.fail("ABSVIT_REQUIRE_LATEX=1 but pdflatex is not installed (apt-get install texlive-latex-recommended)")
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-recommended)")
    return exe


def compile_tables(tex_files, workdir: Path) -> str:
    """\\input every file into one booktabs-only document; fail on any LaTeX error or undefined control sequence.
    Returns the log."""
    exe = require_pdflatex()
    workdir.mkdir(parents=True, exist_ok=True)
    body = "\n".join(rf"\input{{{Path(f).resolve().with_suffix('')}}}" for f in tex_files)
    (workdir / "doc.tex").write_text(PREAMBLE + "\\begin{document}\n" + body + "\n\\end{document}\n")
    out = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=workdir,
                         capture_output=True, text=True, timeout=120)
    log = (workdir / "doc.log").read_text(errors="replace") if (workdir / "doc.log").exists() else out.stdout
    problems = [line for line in log.splitlines() if line.startswith("!") or re.search(r"Undefined control sequence", line)]
    assert out.returncode == 0 and not problems, "\n".join(problems) or out.stdout[-3000:]
    assert (workdir / "doc.pdf").stat().st_size > 0
    return log
