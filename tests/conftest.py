"""Shared fixtures. Offline flags are set before transformers or diffusers can be imported."""

import json
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Libraries that write into the system temp folder on their own (torch's inductor cache, created when torch._dynamo
# is imported; Ray's session folders) write into one folder of this run instead, removed when the run ends.
_RUN_DIR = tempfile.mkdtemp(prefix="fastgda-tests-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(_RUN_DIR, "inductor")
os.environ["RAY_TMPDIR"] = os.path.join(_RUN_DIR, "ray")
os.environ["FASTGDA_CACHE"] = os.path.join(
    _RUN_DIR, "cache"
)  # encoded training sets (``cache_dir``)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def pytest_unconfigure(config):
    shutil.rmtree(_RUN_DIR, ignore_errors=True)


# The longest test files, longest first, start the run: under `make test`'s xdist workers (a file each) the run then
# ends on short files, not on one worker finishing a long file while the other idles.
LONGEST_FILES = ("test_readme.py", "test_reference.py", "test_pack.py", "test_executors.py",
                 "test_teacher_jobs.py", "test_influence.py", "test_counterfactual.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = Path(str(item.fspath)).name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: each file keeps its own order


# A small but real architecture: the tiny16 layout at 8x8 with narrow blocks, conditioned on real MiniLM states.
TEST_PRESET_FIELDS = dict(
    name="test8", image_size=8, block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=4
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A 60-image shapes world (4 exemplars per planted concept), written once per session."""
    from fastgda.app.world import WorldSpec, build_world

    return build_world(
        WorldSpec(size=60, seed=1, num_per_concept=4),
        tmp_path_factory.mktemp("w") / "world",
    )


@pytest.fixture
def image_caption_dir(tmp_path):
    """Eight 8x8 PNGs and a captions.jsonl naming them."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / f"images/{i}.png"
        )
        lines.append(
            json.dumps(
                {"file": f"images/{i}.png", "captions": [f"image {i}", f"picture number {i}"]}
            )
        )
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture(scope="session")
def test_preset():
    from fastgda.diffusion import ModelPreset

    return ModelPreset(**TEST_PRESET_FIELDS)


@pytest.fixture
def tiny_model(test_preset):
    """A freshly initialised 8x8 TextToImageModel (real diffusers UNet, real frozen MiniLM)."""
    from fastgda.diffusion import TextToImageModel

    return TextToImageModel.from_preset(test_preset, seed=0)


@pytest.fixture(scope="session")
def teacher_inputs(small_world, test_preset, tmp_path_factory):
    """A saved tiny model, 3 queries sampled from it, and a diagonal Fisher over the small world."""
    from fastgda.diffusion import TextToImageModel
    from fastgda.diffusion.queries import SamplerConfig, write_query_set
    from fastgda.diffusion.training import prepare_training_data
    from fastgda.unlearning import FisherConfig, fit_fisher

    root = tmp_path_factory.mktemp("teacher")
    model = TextToImageModel.from_preset(test_preset, seed=0)
    model.save(root / "model")
    prompts = [
        "a large cyan circle in the center on a black background",
        "a small red square on the left",
        "a big magenta triangle on the right over gray",
    ]
    write_query_set(
        model,
        prompts,
        root / "queries",
        sampler=SamplerConfig(num_steps=2),
        model_dir=root / "model",
    )
    data = prepare_training_data(model, small_world)
    fit_fisher(model, data, FisherConfig(kind="diagonal", num_samples=32, batch_size=16)).save(
        root / "fisher"
    )
    return {
        "model_dir": root / "model",
        "data_dir": small_world.root,
        "queries_dir": root / "queries",
        "fisher_dir": root / "fisher",
    }


@pytest.fixture(scope="session")
def fast_path(teacher_inputs, tmp_path_factory):
    """Teacher rankings (20 candidates for training queries, all N for test) and pixels+minilm features."""
    from fastgda.cli import main
    from fastgda.unlearning import ScoringConfig, UnlearnConfig
    from fastgda.unlearning.jobs import TeacherConfig, TeacherJob

    root = tmp_path_factory.mktemp("fast")
    for config, name in [(20, "train"), (None, "test")]:
        job = TeacherJob.open(
            out_dir=root / name,
            config=TeacherConfig(
                unlearn=UnlearnConfig(num_pairs=16, batch_size=16),
                scoring=ScoringConfig(timesteps=(500,)),
                num_candidates=config,
            ),
            **teacher_inputs,
        )
        job.run()
        job.merge()
    spec = "pixels+minilm"
    assert (
        main(
            [
                "embed",
                "--data",
                str(teacher_inputs["data_dir"]),
                "--spec",
                spec,
                "--out",
                str(root / "items"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "embed",
                "--data",
                str(teacher_inputs["queries_dir"]),
                "--spec",
                spec,
                "--out",
                str(root / "q"),
            ]
        )
        == 0
    )
    return root, teacher_inputs


@pytest.fixture(scope="session")
def served(fast_path, tmp_path_factory):
    """A small real attributor (ranker trained on the fast-path teacher rankings) and the model it came from."""
    from fastgda.attributor import Attributor
    from fastgda.data import open_dataset
    from fastgda.features import Features
    from fastgda.ground_truth import GroundTruth
    from fastgda.ranker import Ranker, RankerTrainConfig

    root, inputs = fast_path
    out = tmp_path_factory.mktemp("served")
    items, queries = Features.load(root / "items"), Features.load(root / "q")
    truth = GroundTruth.load(root / "train" / "ground_truth")
    config = RankerTrainConfig(hidden=(32,), out_dim=16, epochs=3, batch_queries=2)
    ranker = Ranker.distil(queries, items, truth, config)
    ranker.save(out / "ranker")
    Attributor.build(ranker, open_dataset(inputs["data_dir"]), items).save(out / "attributor")
    return {
        "attributor": out / "attributor",
        "model": inputs["model_dir"],
        "query_image": inputs["queries_dir"] / "images" / "q000000.png",
    }


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """A folder for screenshots a person may want to look at after the tests.

    Under pytest's temporary folder unless ``$FASTGDA_TEST_ARTIFACTS`` names another, so a plain run writes
    nothing into the working tree.
    """
    chosen = os.environ.get("FASTGDA_TEST_ARTIFACTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Debian Chromium driven by Selenium through chromedriver."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail(
            "Debian's chromium and chromium-driver are needed; `make browser` installs them"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Background networking flags: this machine's network is closed, and Chromium would keep retrying.
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1280,1400", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ]:  # fmt: skip
        options.add_argument(flag)
    # The console, read by the browser test for content security policy violations.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
