"""Snakemake's report of a finished run, read as a reader reads it: `snakemake --report` of a toy embedded run, opened
in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium) and navigated from the sidebar's
categories to the results. The figures and the tables must render, the captions say where the numbers come from.
Skipped where the browser is absent, unless ABSVIT_REQUIRE_BROWSER=1 (CI installs it and sets that)."""
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from absvit.cli import main
from absvit.pages import html_page
from tests.helpers import SNAKEMAKE, toy_embedded, workflow_copy

SCREENSHOTS = Path("/tmp/absvit-report-screenshots")  # a copy of each screenshot, outside pytest's tmp folders
TABLES = {"Table 1": ("table1", "Table 1: semantic segmentation (mIoU)"),
          "Table 2": ("table2", "Table 2: the L_var ablation"),
          "Table 3": ("table3", "Table 3: ViT vs AbSViT robustness"),
          "Table 4": ("table4", "Table 4: V&L fine-tuning, ViT vs AbSViT")}
PAPER = {"Table 4": "The appendix gives no V&L numbers"}  # what a caption says of the paper's values (default below)
FIGURES = {"Fig. 1: bottom-up vs top-down attention": "fig1_attention", "Fig. 3: the feedback scale alpha": "fig3_alpha",
           "Fig. 4: what the first-layer tokens hold": "fig4_decoder",
           "Figure 5: attention moved by the question (V&L)": "fig5_vqa"}
CATEGORIES = ["Cost", "Figures", "Report", "Table 1", "Table 2", "Table 3", "Table 4"]


def test_a_markdown_table_becomes_an_html_table_and_html_in_it_is_escaped():
    page = html_page("# Title\n\nLabel <b>bold</b>\n\n| Model | Clean |\n|---|---|\n| vit | 12.5 |\n", title="t")
    assert page.startswith("<!doctype html>") and "<title>t</title>" in page and "<h1>Title</h1>" in page
    assert "<th>Model</th>" in page and "<td>12.5</td>" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>" not in page


def test_html_verb_writes_a_page_beside_each_markdown_file_and_refuses_anything_else(tmp_path, capsys):
    md = tmp_path / "table9.md"
    md.write_text("| a | b |\n|---|---|\n| 1 | ± 2 |\n", encoding="utf-8")
    assert main(["html", str(md)]) == 0
    assert "<td>± 2</td>" in (tmp_path / "table9.html").read_text(encoding="utf-8")
    assert capsys.readouterr().out.strip() == str(tmp_path / "table9.html")
    assert main(["html", str(tmp_path / "table9.csv")]) == 2
    assert f"{tmp_path / 'table9.csv'}: expected an existing Markdown file (.md)" in capsys.readouterr().err


def _browser_programs() -> tuple[str, str]:
    """Chromium and chromedriver (and selenium), or a skip saying what to install."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", chromedriver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip, envs/requirements.lock)")
    if missing:
        why = f"no headless browser for the report test: missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("ABSVIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ABSVIT_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    return chromium, chromedriver


def _toy(config):
    """The embedded preset at toy size: one seed, one epoch, two segmentation jobs, four scenes."""
    p = toy_embedded(config)
    p["figures"].update(scenes={"seed": 0, "count": 4, "size": 64}, decoder_images=64, show=2)
    p["vl"]["data"]["generate"]["counts"] = {"train": 4, "val": 2, "test": 2}
    p["vl"]["recipe"].update(batch_size=8, hidden=32, layers=1)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, embedded, embedded_c):
    """A finished toy run of the workflow (`snakemake all`) and its report: (workflow folder, report.html)."""
    _browser_programs()  # before minutes of work that only a browser can check
    wd = workflow_copy(tmp_path_factory.mktemp("report-run"), _toy)
    data = wd / "results" / "data" / "embedded"  # the session's data in place of the data stage's outputs
    shutil.copytree(embedded, data)
    shutil.copytree(embedded_c, data / "imagenet-c")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the run's own store, under results/
    run = subprocess.run([SNAKEMAKE, "--cores", "2", "all"], cwd=wd, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(f"\n== {p}\n{p.read_text()[-2000:]}" for p in (wd / "results/embedded/logs").rglob("*.log"))
    assert run.returncode == 0, run.stderr[-4000:] + logs
    assert "rule embedded_dataset" not in run.stderr + run.stdout  # the copied data was used
    report = wd / "results" / "embedded" / "report.html"
    out = subprocess.run([SNAKEMAKE, "--report", str(report)], cwd=wd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and report.is_file(), out.stderr[-4000:]
    return wd, report


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, chromedriver = _browser_programs()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    yield driver
    driver.quit()


def _literal(text: str) -> str:
    """``text`` as an XPath string literal (XPath 1 has no escapes: a text with an apostrophe goes in double quotes)."""
    return f'"{text}"' if "'" in text else f"'{text}'"


class Reader:
    """What a reader does in the report: open it, pick a category (and subcategory) in the sidebar, view a result or
    its description."""

    def __init__(self, driver, report: Path):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.report, self.by, self.ec = driver, report, By, expected_conditions
        self.wait = WebDriverWait(driver, 30)
        self.start()

    def start(self):
        """The report as it opens: the workflow graph, the sidebar's menu."""
        self.driver.switch_to.default_content()
        self.driver.get(self.report.as_uri())
        self.wait.until(lambda d: d.find_elements(self.by.XPATH, "//nav//a[normalize-space(.)='Workflow']"))

    def menu(self) -> list[str]:
        return [a.text.strip() for a in self.driver.find_elements(self.by.XPATH, "//nav//li/a") if a.text.strip()]

    def click(self, xpath: str):
        """Click the element, retried until the click lands (within the wait's deadline): the sidebar animates its
        entries (CSS transitions) after each click, and on a busy machine the element can still be moving, so that
        Chrome refuses the click because another entry is under the point (nothing is clicked then)."""
        from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException

        def clicked(driver) -> bool:
            element = self.ec.element_to_be_clickable((self.by.XPATH, xpath))(driver)
            if not element:
                return False
            try:
                element.click()
            except (ElementClickInterceptedException, StaleElementReferenceException):
                return False
            return True

        self.wait.until(clicked)

    def open(self, *names: str):
        """From the start, sidebar entries (a category, then a subcategory) by their text."""
        self.start()
        for name in names:
            self.click(f"//nav//li/a[normalize-space(.)={_literal(name)}]")

    def result(self, label: str, button: int):
        """Button ``button`` (0: view, 1: description) of the result listed as ``label``."""
        self.click(f"(//nav//tr[td[normalize-space(.)={_literal(label)}]]//a[@type='button'])[{button + 1}]")

    def description(self) -> str:
        return self.wait.until(lambda d: d.find_element(self.by.CSS_SELECTOR, "nav li.prose")).text

    def page_rows(self) -> list[list[str]]:
        """The rows (header first) of the table in the page shown in the content pane."""
        frame = self.wait.until(lambda d: d.find_element(self.by.TAG_NAME, "iframe"))
        self.driver.switch_to.frame(frame)
        try:
            self.wait.until(lambda d: d.find_elements(self.by.CSS_SELECTOR, "table tr"))
            return [[c.text.strip() for c in tr.find_elements(self.by.XPATH, "./th|./td")]
                    for tr in self.driver.find_elements(self.by.CSS_SELECTOR, "table tr")]
        finally:
            self.driver.switch_to.default_content()

    def image_size(self) -> tuple[int, int]:
        """The natural size of the image shown in the content pane, once loaded (0 x 0: it did not decode)."""
        img = self.wait.until(lambda d: d.find_element(self.by.XPATH, "//div[contains(@class, 'p-3')]/img"))
        self.wait.until(lambda d: d.execute_script("return arguments[0].complete", img))
        return tuple(self.driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img))

    def screenshot(self, path: Path) -> Path:
        self.driver.save_screenshot(str(path))
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / path.name)
        print(f"screenshot: {path} (copy: {SCREENSHOTS / path.name})")
        return path


@pytest.mark.slow
def test_report_lists_every_category_and_describes_the_workflow(finished_run, browser):
    wd, report = finished_run
    reader = Reader(browser, report)
    menu = reader.menu()
    assert [m for m in menu if m in CATEGORIES] == CATEGORIES, menu  # an empty report has none of them
    reader.open("Workflow")
    text = browser.find_element(reader.by.CSS_SELECTOR, "div.prose").text
    assert "preset embedded with seeds 0" in text and "say nothing about ImageNet" in text, text
    # every table and figure the run makes is named on the landing page (Table 4 and Figure 5 were missing)
    assert "Table 1, Table 2, Table 3 and Table 4" in text and "Figs. 1, 3 and 4 and Figure 5" in text, text


@pytest.mark.slow
@pytest.mark.parametrize("category", list(TABLES))
def test_tables_render_with_the_csv_numbers_and_captions_naming_the_preset(finished_run, browser, category, tmp_path):
    wd, report = finished_run
    stem, label = TABLES[category]
    csv = pd.read_csv(wd / "results" / "embedded" / "tables" / f"{stem}.csv", index_col="Model")
    reader = Reader(browser, report)
    reader.open(category)  # a category of one subcategory lists its results at once
    reader.result(label, 0)
    header, *body = reader.page_rows()
    assert header == ["Model", *csv.columns], header
    shown = {row[0]: dict(zip(header[1:], row[1:])) for row in body}
    assert list(shown) == list(csv.index)
    for model in csv.index:  # one seed: every cell is the CSV's mean to one decimal
        assert shown[model] == {c: "--" if pd.isna(v) else f"{v:.1f}" for c, v in csv.loc[model].items()}, model
    if category == "Table 3":
        assert shown["absvit_pico_patch8_64_gap"]["Clean"] == f"{csv.loc['absvit_pico_patch8_64_gap', 'Clean']:.1f}"
        reader.screenshot(tmp_path / "report-table3.png")

    reader.result(label, 1)
    caption = reader.description()
    assert "preset embedded, seeds 0" in caption and "say nothing about ImageNet" in caption, caption
    assert PAPER.get(category, "The paper's values") in caption
    if category == "Table 3":
        reader.screenshot(tmp_path / "report-table3-caption.png")
    reader.open(category)
    reader.result(f"{label} (CSV)", 1)  # the CSV: same caption, offered as a download
    assert "preset embedded, seeds 0" in reader.description()


@pytest.mark.slow
def test_figures_render_per_seed_with_their_captions(finished_run, browser, tmp_path):
    wd, report = finished_run
    reader = Reader(browser, report)
    for label, stem in FIGURES.items():
        reader.open("Figures", "Seed 0")
        reader.result(label, 0)
        with Image.open(wd / "results" / "embedded" / "figures" / "s0" / f"{stem}.png") as png:
            assert reader.image_size() == png.size, label  # the figure itself, decoded by the browser
        if stem == "fig1_attention":
            reader.screenshot(tmp_path / "report-fig1.png")
        reader.result(label, 1)
        caption = reader.description()
        assert "(seed 0)" in caption and "Preset embedded" in caption and "say nothing about ImageNet" in caption


@pytest.mark.slow
@pytest.mark.parametrize("category, label, expect", [
    ("Figures", "Scores of Figs. 1, 3, 4", "Pointing game (%)"),
    ("Figures", "Scores of Figure 5 (V&L)", "Map shift"),
    ("Cost", "What the run cost, per stage", "total"),
    ("Report", "Reproduction report: each number beside the paper's", "paper"),
])
def test_score_cost_and_report_pages_render_their_tables(finished_run, browser, category, label, expect):
    wd, report = finished_run
    reader = Reader(browser, report)
    where = (category, "Scores (all seeds)") if category == "Figures" else (category,)
    reader.open(*where)
    reader.result(label, 0)
    rows = reader.page_rows()
    assert len(rows) > 1 and any(expect in cell for row in rows for cell in row), rows
    reader.open(*where)
    reader.result(label, 1)
    assert "embedded" in reader.description()
