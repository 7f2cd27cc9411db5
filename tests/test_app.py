"""`cifar app`: the page serves a checkpoint as `cifar predict` and `cifar gradcam` judge it — through
gradio_client, and in a real browser (headless Chromium) — and `--space` writes a folder that runs on its own.

The page's tests need the [app] extra (and the browser test Chromium and Selenium); they skip saying so
without them. .ci/run installs all three.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_DATA, SMALL_NET, TRAIN_ARGS, assert_clean_error, cli, write_network
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "cifar_cli" / "examples"
NO_GRADIO = "the page needs the [app] extra: pip install -e '.[app]'"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server ended ({server.returncode}): {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as page:
                if page.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"no page at {url} after {seconds} s: {log.read_text()}")


@contextmanager
def serving(argv: list[str], port: int, cwd: Path, env: dict | None = None) -> Iterator[str]:
    """A server started as a user starts it, in its own process; its address while it runs."""
    log = cwd / f"server-{port}.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(argv, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, env=env or os.environ.copy())
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def predicted(picture: Path, *checkpoint: str) -> dict:
    """`cifar predict --json` of one picture: {class: probability} of all ten classes."""
    result = cli("predict", picture, *checkpoint, "--top", "10", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    return {t["class"]: t["probability"] for t in json.loads(result.stdout)["predictions"][0]["top"]}


def test_the_example_pictures_are_the_first_test_image_of_each_class():
    from cifar_cli.data import CLASSES, load_split
    from cifar_cli.pictures import example_pictures, load_image

    pictures = example_pictures()
    assert [p.stem for p in pictures] == list(CLASSES) and all(p.is_file() for p in pictures)
    if REAL_DATA is None:
        pytest.skip("the full CIFAR-10 is not there: set CIFAR_DATA_DIR to check the pixels")
    test = load_split(REAL_DATA, train=False)
    for label, picture in enumerate(pictures):
        first = int(np.flatnonzero(test.labels == label)[0])
        assert np.array_equal(load_image(picture), test.images[first]), picture.name


def test_without_the_app_extra_the_command_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert_clean_error(cli("app"), "cifar app needs gradio", "pip install 'cifar-cli[app]'")


@pytest.fixture(scope="module")
def user_run(tiny_data: Path, tmp_path_factory) -> tuple[Path, str]:
    """A user's own network, trained here for one epoch: its run folder and its --model."""
    here = tmp_path_factory.mktemp("user")
    model = write_network(here / "mynet.py", SMALL_NET)
    result = cli("train", "--model", model, "--epochs", "1", "--data-dir", tiny_data, "--out", here / "run",
                 *TRAIN_ARGS)
    assert result.exit_code == 0, result.stderr
    return here / "run", model


@pytest.fixture(scope="module")
def served_run(user_run: tuple[Path, str], tiny_data: Path, tmp_path_factory) -> Iterator[tuple[str, Path, str]]:
    """The user network's run folder, served, with the tiny test set for its mistakes."""
    pytest.importorskip("gradio", reason=NO_GRADIO)
    (run, model), port, here = user_run, free_port(), tmp_path_factory.mktemp("served")
    argv = [sys.executable, "-m", "cifar_cli", "app", "-c", str(run), "--model", model, "--port", str(port),
            "--data-dir", str(tiny_data), "--device", "cpu"]
    with serving(argv, port, here) as url:
        yield url, run, model


def a_photo(tmp_path: Path) -> Path:
    """A picture as people upload them: bigger than 32x32 and not square (squashed as predict does)."""
    photo = tmp_path / "boat photo.jpg"
    Image.open(EXAMPLES / "ship.png").resize((80, 64), Image.Resampling.BICUBIC).save(photo, quality=95)
    return photo


def test_the_page_classifies_as_cifar_predict_does(served_run, tmp_path):
    from gradio_client import Client, handle_file

    url, run, model = served_run
    client = Client(url, verbose=False)
    for picture in (EXAMPLES / "cat.png", a_photo(tmp_path)):
        expected = predicted(picture, "-c", str(run), "--model", model)
        label, overlay, note = client.predict(handle_file(str(picture)), 4, None, 0.5, api_name="/look")
        shown = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert label["label"] == max(expected, key=expected.get)
        assert list(shown) == sorted(expected, key=expected.get, reverse=True)[:4]
        assert all(abs(shown[name] - expected[name]) < 1e-6 for name in shown)
        with Image.open(overlay) as drawn:
            assert drawn.size == (256, 256) and drawn.mode == "RGB"
        assert ("squashed" in note) == (picture.suffix == ".jpg")


def test_the_gallery_shows_the_mistakes_cifar_mistakes_finds(served_run, tiny_data):
    from gradio_client import Client

    url, run, model = served_run
    shown, why = Client(url, verbose=False).predict(5, api_name="/mistakes")
    result = cli("mistakes", str(run), "--model", model, "-n", "5", "--data-dir", tiny_data, "--device", "cpu",
                 "--json", "--out", str(tiny_data.parent / "m.png"))
    mistakes = json.loads(result.stdout)["shown"]
    assert why == "" and len(shown) == len(mistakes) > 0
    for item, m in zip(shown, mistakes):
        assert item["caption"].startswith(f"{m['true']} -> {m['predicted']} ")
        assert item["caption"].endswith(f"(test #{m['index']})")


def test_a_taken_port_is_one_line(served_run):
    url, run, model = served_run
    port = url.rstrip("/").rpartition(":")[2]
    result = subprocess.run([sys.executable, "-m", "cifar_cli", "app", "-c", str(run), "--model", model, "--port", port,
                             "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    said = result.stderr.splitlines()
    assert said[-1] == f"error: cannot serve on 127.0.0.1:{port}: the port is in use; choose another with --port"
    assert len(said) == 2 and said[0].startswith("run folder ")  # which checkpoint the folder meant


# --- in a real browser ----------------------------------------------------------------------------------------

def browser():
    pytest.importorskip("gradio", reason=NO_GRADIO)
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test drives Chromium with Selenium: "
                                    "pip install selenium")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no headless browser here: install Chromium and its driver (Debian: apt-get install chromium "
                    "chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def test_in_a_browser_an_upload_shows_the_class_predict_gives_and_its_gradcam(tiny_data, tmp_path):
    """The shipped checkpoint, served; a picture uploaded in headless Chromium. The screenshot is kept in the
    test's folder, and written to $CIFAR_APP_SCREENSHOT too when set (results/app.png: see docs/app.md)."""
    driver = browser()  # or a skip saying what is missing
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, picture = free_port(), EXAMPLES / "horse.png"
    data = REAL_DATA if REAL_DATA is not None and os.environ.get("CIFAR_APP_SCREENSHOT") else tiny_data
    argv = [sys.executable, "-m", "cifar_cli", "app", "--port", str(port), "--data-dir", str(data), "--device", "cpu"]
    try:
        with serving(argv, port, tmp_path) as url:
            driver.get(url)
            wait = WebDriverWait(driver, 120)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#picture input[type=file]"))
            driver.find_element(By.CSS_SELECTOR, "#picture input[type=file]").send_keys(str(picture))
            shown = wait.until(lambda d: _text(d, "#classes [data-testid=label-output-value]"))
            cam = wait.until(lambda d: _loaded_image(d, "#gradcam img"))
            driver.find_element(By.XPATH, "//button[contains(., 'Mistakes on the test set')]").click()
            wait.until(lambda d: d.find_elements(By.XPATH, "//button[contains(., 'Show the mistakes')]"))
            driver.find_element(By.XPATH, "//button[contains(., 'Show the mistakes')]").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#mistakes img")) >= 8)
            time.sleep(1)  # the gallery's thumbnails finish drawing
            driver.save_screenshot(str(tmp_path / "app.png"))
            if os.environ.get("CIFAR_APP_SCREENSHOT"):
                shutil.copyfile(tmp_path / "app.png", os.environ["CIFAR_APP_SCREENSHOT"])
    finally:
        driver.quit()
    expected = predicted(picture)
    assert shown == max(expected, key=expected.get)
    assert cam["width"] > 0 and cam["src"]
    with Image.open(tmp_path / "app.png") as screenshot:
        assert np.asarray(screenshot.convert("L")).std() > 10  # a page was drawn, not a blank window


def _text(driver, selector: str) -> str | bool:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return bool(found) and found[0].text.strip()


def _loaded_image(driver, selector: str) -> dict | bool:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    if not found:
        return False
    size = driver.execute_script("return [arguments[0].complete, arguments[0].naturalWidth];", found[0])
    return size[0] and size[1] > 0 and {"width": size[1], "src": found[0].get_attribute("src")}


# --- a Space ---------------------------------------------------------------------------------------------------

def test_a_space_carries_the_weights_and_the_networks_own_source(user_run, tiny_data, tmp_path):
    pytest.importorskip("gradio", reason=NO_GRADIO)
    run, model = user_run
    result = cli("app", "--space", tmp_path / "space", "-c", run, "--model", model, "--data-dir", tiny_data,
                 "--cifar-cli", "git+https://example.org/cifar-cli@v1", "--json")
    assert result.exit_code == 0, result.stderr
    written = json.loads(result.stdout)
    space = tmp_path / "space"
    assert sorted(p.name for p in space.iterdir()) == written["files"] == [
        "README.md", "app.py", "mistakes.npz", "model.safetensors", "mynet.py", "requirements.txt"]
    source = Path(model.rpartition(":")[0])
    assert (space / "mynet.py").read_bytes() == source.read_bytes()
    assert (space / "requirements.txt").read_text() == "cifar-cli[app] @ git+https://example.org/cifar-cli@v1\n"
    readme = (space / "README.md").read_text()
    assert readme.startswith("---\ntitle: ") and "\nsdk: gradio\n" in readme and "\napp_file: app.py\n" in readme
    assert "mynet.py" in readme
    header = json.loads((space / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
        (space / "model.safetensors").read_bytes()[:8], "little")])
    assert not any(name.startswith("optimizer.") for name in header)  # weights only


def test_a_space_refuses_a_changed_network_and_a_used_folder(user_run, tmp_path):
    pytest.importorskip("gradio", reason=NO_GRADIO)
    run, model = user_run
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert_clean_error(cli("app", "--space", tmp_path / "used", "-c", run, "--model", model),
                       "not an empty folder")
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"
    changed = tmp_path / "changed.py"
    changed.write_text(Path(model.rpartition(":")[0]).read_text() + "\n# edited\n")
    assert_clean_error(cli("app", "--space", tmp_path / "s", "-c", run, "--model", f"{changed}:Net"),
                       "has changed since", "must carry the source that trained these weights")
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(os.environ.get("CIFAR_SPACE_TEST") != "1",
                    reason="builds a fresh virtualenv from the Space's requirements.txt (minutes, a full torch "
                           "install): set CIFAR_SPACE_TEST=1; .ci/run does")
def test_a_space_runs_from_a_fresh_virtualenv_built_from_its_requirements(user_run, tiny_data, tmp_path):
    pytest.importorskip("gradio", reason=NO_GRADIO)
    from gradio_client import Client, handle_file

    run, model = user_run
    space = tmp_path / "space"
    result = cli("app", "--space", space, "-c", run, "--model", model, "--data-dir", tiny_data, "--cifar-cli", ROOT)
    assert result.exit_code == 0, result.stderr
    assert (space / "requirements.txt").read_text() == f"cifar-cli[app] @ {ROOT.as_uri()}\n"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "-r", space / "requirements.txt"], check=True,
                   cwd=space, timeout=1800)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["GRADIO_SERVER_PORT"] = str(port)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with serving([str(venv / "bin" / "python"), str(space / "app.py")], port, elsewhere, env) as url:
        label, _, _ = Client(url, verbose=False).predict(handle_file(str(EXAMPLES / "dog.png")), 3, None, 0.5,
                                                         api_name="/look")
        shown, why = Client(url, verbose=False).predict(3, api_name="/mistakes")
    expected = predicted(EXAMPLES / "dog.png", "-c", str(run), "--model", model)
    assert label["label"] == max(expected, key=expected.get)
    assert why == "" and len(shown) == 3
