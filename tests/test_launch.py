"""The launch scripts and the Colab notebook: syntax, the backend check of the scripts
(run with fake python, pip, git and gcloud on PATH) and the notebook's failure handling."""

import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = sorted(n for n in os.listdir(LAUNCH) if n.endswith(".sh"))

# Stand-ins for the programs the scripts call. python answers the backend check with
# $FAKE_BACKEND (failing to import jax when it is empty) and logs a training start.
_FAKES = {
    "python": """
        if [ "$1" = -c ]; then
          [ -n "$FAKE_BACKEND" ] || { echo "ModuleNotFoundError: No module named 'jax'" >&2; exit 1; }
          echo "some notice"; echo "$FAKE_BACKEND"
        else
          echo "train $*" >> "$FAKE_LOG"
        fi
    """,
    "python3": """
        [ "$1 $2 $3" = "-m venv .venv" ] && mkdir -p .venv/bin && : > .venv/bin/activate
        echo "venv" >> "$FAKE_LOG"
    """,
    "pip": 'echo "pip $*" >> "$FAKE_LOG"',
    "git": """
        if [ "$1" = clone ]; then
          target="${@: -1}"; mkdir -p "$target" && cp -r "$FAKE_LAUNCH" "$target/launch"
        fi
    """,
    # gcloud: the TPU exists; ssh runs its --command here, as one worker would.
    "gcloud": """
        while [ $# -gt 0 ]; do
          if [ "$1" = --command ]; then cd "$FAKE_HOME" && exec bash -c "$2"; fi
          shift
        done
    """,
}


@pytest.fixture
def fake_env(tmp_path):
    """(environment, log file): the fakes first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in _FAKES.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
        path.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "log"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log),
               FAKE_HOME=str(home), FAKE_LAUNCH=LAUNCH, CONFIG="configs/x.py:tiny",
               WORKDIR="runs/x")
    env.pop("ALLOW_CPU", None)
    env.pop("VIRTUAL_ENV", None)
    return env, log


def _log(log) -> str:
    return log.read_text() if log.exists() else ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)], check=True)


def _gpu_checkout(tmp_path, with_venv: bool) -> str:
    """A copy of the launch folder in a fake checkout; the path of its gpu.sh."""
    checkout = tmp_path / "checkout"
    shutil.copytree(LAUNCH, checkout / "launch")
    if with_venv:
        (checkout / ".venv" / "bin").mkdir(parents=True)
        (checkout / ".venv" / "bin" / "activate").write_text("")
    return str(checkout / "launch" / "gpu.sh")


@pytest.mark.parametrize("backend, allow_cpu, trains, message", [
    ("gpu", "", True, None),
    ("cpu", "", False, "error: jax in .* runs on 'cpu', not 'gpu'.*pip install -U 'jax\\[cuda12\\]'"
                       ".*ALLOW_CPU=1"),
    ("cpu", "1", True, "warning: jax has no gpu here; training on the CPU"),
    ("", "", False, "runs on 'nothing: importing jax failed', not 'gpu'"),
])
def test_gpu_script_checks_the_backend_of_a_reused_venv(tmp_path, fake_env, backend, allow_cpu,
                                                         trains, message):
    env, log = fake_env
    env.update(FAKE_BACKEND=backend, ALLOW_CPU=allow_cpu)
    proc = subprocess.run(["bash", _gpu_checkout(tmp_path, with_venv=True),
                           "--config.seed=3"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode == 0) == trains, proc.stderr
    if message:
        assert re.search(message, proc.stderr), proc.stderr
    expected = ("train -m adverse_vision.train --config configs/x.py:tiny --workdir runs/x "
                "--config.seed=3\n")
    assert _log(log) == (expected if trains else "")


def test_gpu_script_makes_a_cuda_venv_when_there_is_none(tmp_path, fake_env):
    env, log = fake_env
    env.update(FAKE_BACKEND="gpu")
    proc = subprocess.run(["bash", _gpu_checkout(tmp_path, with_venv=False)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    venv, pip, package, train = _log(log).splitlines()
    assert venv == "venv" and "-r requirements.lock" in pip and "jax[cuda12]" in pip
    assert package == "pip install -q --no-deps -e ." and train.startswith("train -m adverse")


def _tpu_env(env, **extra):
    env.update({"TPU_NAME": "t", "ZONE": "z", "REPO": "https://example.com/adverse_vision.git",
                "WORKDIR": "gs://b/runs/x", "COMMIT": "0123abcd", **extra})
    return env


@pytest.mark.parametrize("backend, allow_cpu, trains", [
    ("tpu", "", True), ("cpu", "", False), ("cpu", "1", True)])
def test_tpu_script_checks_the_backend_on_the_worker(fake_env, backend, allow_cpu, trains):
    env, log = fake_env
    _tpu_env(env, FAKE_BACKEND=backend, ALLOW_CPU=allow_cpu)
    proc = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh"), "--config.seed=3"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert (proc.returncode == 0) == trains, proc.stderr
    lines = _log(log).splitlines()
    assert lines[0] == "venv" and "-r requirements.lock" in lines[1] and "jax[tpu]" in lines[1]
    assert lines[2] == "pip install -q --no-deps -e ."
    if trains:
        host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
        assert lines[3:] == [
            "train -m adverse_vision.train --config configs/x.py:tiny --workdir gs://b/runs/x "
            "--progress off --config.seed=3",
            f"train -m adverse_vision.storage copy train.log gs://b/runs/x/logs/{host}.log"]
    else:
        assert lines[3:] == []
        assert "runs on 'cpu', not 'tpu'" in proc.stderr and "jax[tpu]" in proc.stderr


def test_tpu_script_installs_once_per_commit(fake_env):
    env, log = fake_env
    _tpu_env(env, FAKE_BACKEND="tpu")
    script = os.path.join(LAUNCH, "tpu_vm.sh")
    for _ in range(2):
        subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60,
                       check=True)
    installs = [line for line in _log(log).splitlines() if line.startswith("pip")]
    assert len(installs) == 2  # the lock and the package, the first time only
    trains = [line for line in _log(log).splitlines() if "adverse_vision.train" in line]
    assert len(trains) == 2


def test_tpu_script_dry_run_prints_every_command_without_gcloud(fake_env):
    env, log = fake_env
    _tpu_env(env)
    bin_dir = env["PATH"].split(":")[0]
    os.remove(os.path.join(bin_dir, "gcloud"))
    proc = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh"), "--dry-run",
                           "--config.seed=3"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "gcloud compute tpus tpu-vm create t --zone z --accelerator-type v4-8" in out
    assert "gcloud compute tpus tpu-vm ssh t --zone z --worker=all --command" in out
    for piece in ("git checkout --quiet 0123abcd", "requirements.lock", "installed-0123abcd",
                  "JAX_COMPILATION_CACHE_DIR=gs://b/runs/x/jax_cache",
                  "--workdir gs://b/runs/x --progress off --config.seed=3",
                  "adverse_vision.storage copy train.log gs://b/runs/x/logs/"):
        assert piece in out, piece
    assert _log(log) == ""


def test_tpu_script_needs_a_commit_hash(fake_env):
    env, log = fake_env
    _tpu_env(env, COMMIT="main; rm -rf /")
    proc = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "COMMIT must be a commit hash" in proc.stderr
    assert _log(log) == ""


def test_gpu_script_dry_run(tmp_path, fake_env):
    env, log = fake_env
    env.update(JAX_COORDINATOR_ADDRESS="10.0.0.2:1234", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID="1", XLA_FLAGS="--xla_dump_to=/tmp/d")
    proc = subprocess.run(["bash", _gpu_checkout(tmp_path, with_venv=False), "--dry-run",
                           "--config.seed=3"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "python3 -m venv .venv "
    assert "requirements.lock" in lines[2] and "jax\\[cuda12\\]" in lines[2]
    assert "--xla_dump_to=/tmp/d\\ --xla_gpu_enable_latency_hiding_scheduler=true" in lines[-2]
    assert lines[-1] == ("python -m adverse_vision.train --config configs/x.py:tiny "
                         "--workdir runs/x --config.seed=3 ")
    assert "process 1 of 2 (coordinator 10.0.0.2:1234)" in proc.stderr
    assert _log(log) == ""


def test_tpu_script_refuses_a_placeholder_repository(fake_env):
    env, log = fake_env
    env.update(TPU_NAME="t", ZONE="z", REPO="https://github.com/<you>/adverse_vision.git")
    proc = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_vm.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "placeholder" in proc.stderr
    assert _log(log) == ""


# --------------------------------------------------------------------------- notebook

def _notebook_code_cells() -> list[str]:
    with open(os.path.join(LAUNCH, "colab.ipynb")) as f:
        notebook = json.load(f)
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def _python(cell: str) -> str:
    """A cell without its shell (``!``) and magic (``%``) lines."""
    return "\n".join(line for line in cell.splitlines()
                     if not line.lstrip().startswith(("!", "%")))


def test_notebook_cells_are_python():
    for i, cell in enumerate(_notebook_code_cells()):
        compile(_python(cell), f"colab.ipynb code cell {i}", "exec")


def test_notebook_shell_lines_cannot_fail_silently():
    for cell in _notebook_code_cells():
        for line in cell.splitlines():
            if line.lstrip().startswith("!"):
                assert not re.search(r"<[A-Za-z_]+>", line), line  # read as a redirection
                assert "|| true" not in line and "2>/dev/null" not in line, line


def test_notebook_kernel_never_imports_jax():
    for cell in _notebook_code_cells():
        for node in ast.walk(ast.parse(_python(cell))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "jax" or n.startswith("jax.") for n in names), cell


def test_notebook_refuses_the_placeholder_and_stops_at_a_failed_command(capsys, tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)  # no clone there yet
    settings = "\n".join(_notebook_code_cells()[:2])  # the parameters and the helpers
    with pytest.raises(ValueError, match="REPO_URL"):
        exec(compile(settings, "settings", "exec"), {})
    namespace = {}
    set_url = re.sub(r'REPO_URL = ".*"', 'REPO_URL = "https://example.com/adverse_vision.git"',
                     settings)
    exec(compile(set_url, "settings", "exec"), namespace)
    namespace["run"](sys.executable, "-c", "print('from the command')", cwd=None)
    assert "from the command" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="failed with exit status 3"):
        namespace["run"](sys.executable, "-c", "raise SystemExit(3)", cwd=None)


def test_the_lock_file_pins_every_requirement():
    """requirements.lock (what the launch scripts install) pins an exact version of
    every package requirements.txt names."""
    def names(path, pinned):
        out = {}
        with open(os.path.join(REPO, path)) as f:
            for line in f:
                line = line.split("#")[0].strip()
                if line:
                    name = re.split(r"[<>=\[ ]", line)[0].lower().replace("_", "-")
                    out[name] = line
        return out
    wanted = names("requirements.txt", False)
    locked = names("requirements.lock", True)
    missing = sorted(set(wanted) - set(locked))
    assert not missing, f"not in requirements.lock: {missing}"
    assert all("==" in locked[n] for n in locked), [l for l in locked.values() if "==" not in l]


#: The methods the notebook shows, one cell each (``if "<name>" in METHODS:``).
NOTEBOOK_METHODS = ("detection", "togethernet", "dnhl", "depth_dehaze", "bdlf")


def test_the_notebook_runs_every_method(tmp_path, monkeypatch):
    """The whole notebook, executed by a Jupyter kernel on the CPU: the smoke variant of
    every recipe for 2 steps, predictions on 2 validation images each, shown as images."""
    import nbclient  # pylint: disable=import-outside-toplevel
    import nbformat  # pylint: disable=import-outside-toplevel
    monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device for the runs: they compile sooner
    notebook = nbformat.read(os.path.join(LAUNCH, "colab.ipynb"), as_version=4)
    params = next(i for i, c in enumerate(notebook.cells)
                  if "parameters" in c.metadata.get("tags", []))
    samples = 2
    notebook.cells.insert(params + 1, nbformat.v4.new_code_cell(
        f"REPO_DIR = {REPO!r}\nINSTALL = False\nVARIANT = 'smoke'\nSTEPS = 2\n"
        f"RUNS = {str(tmp_path / 'runs')!r}\nSAMPLES = {samples}\nSHOW_TENSORBOARD = False"))
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = {}
    for cell in notebook.cells:
        for name in NOTEBOOK_METHODS:
            if cell.cell_type == "code" and cell.source.startswith(f'if "{name}" in METHODS'):
                shown[name] = [o for o in cell.outputs if o.output_type == "display_data"
                               and "image/png" in o.data]
    assert {name: len(images) for name, images in shown.items()} == {
        name: samples for name in NOTEBOOK_METHODS}


# ------------------------------------------------------------------- bdlf_lwir.sh

def test_bdlf_lwir_runs_readme_comparison_as_valid_runs(tmp_path, monkeypatch):
    """Its dry run: the pretraining, then per seed the five runs in order, each a command
    line whose config loads, takes its overrides and validates; each run starts from
    runs made before it; the tables read the runs it makes."""
    import shlex  # pylint: disable=import-outside-toplevel
    from absl import flags  # pylint: disable=import-outside-toplevel
    from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
    from adverse_vision import cli, methods  # pylint: disable=import-outside-toplevel
    runs = tmp_path / "runs"
    proc = subprocess.run(["bash", os.path.join(LAUNCH, "bdlf_lwir.sh"), "--dry-run",
                           "--config.data.num_workers=0"],
                          env=dict(os.environ, RUNS=str(runs), SEEDS="0 1"),
                          capture_output=True, text=True, timeout=60, check=True)
    lines = [shlex.split(line) for line in proc.stdout.splitlines()]
    trains = [a for a in lines if a[:3] == ["python", "-m", "adverse_vision.train"]]
    tables = [a for a in lines if a[:3] == ["python", "-m", "adverse_vision.tabulate"]]
    assert len(trains) == 1 + 2 * 5 and len(tables) == 2 and len(lines) == 13
    made = []
    monkeypatch.chdir(REPO)
    for args in trains:
        workdir = args[args.index("--workdir") + 1]
        argv = ["train"] + [a for i, a in enumerate(args) if a.startswith("--config")
                            or args[i - 1] == "--config"]
        cli.check_command_line(argv[1:])
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
        monkeypatch.setattr(sys, "argv", argv)
        values(argv)
        cfg = methods.validate(values.config)
        assert cfg.data.num_workers == 0  # the extra argument reaches every run
        if cfg.method == "bdlf":
            assert cfg.bdlf.detector_from == made[0] == str(runs / "pre_clear")
            assert cfg.data.thermal == "lwir" and cfg.total_steps == 1600
            second = os.path.basename(workdir).startswith(("lwirp_bdlf", "lwirp_fusion2"))
            start = str(runs / f"lwirp_fusion_{cfg.seed}")
            assert cfg.bdlf.fusion_from == (start if second else ""), workdir
            assert start in made or not second
        made.append(workdir)
    names = [os.path.basename(w) for w in made]
    assert names == ["pre_clear"] + [f"lwirp_{arm}_{s}" for s in (0, 1) for arm in
                                     ("visible", "infrared", "fusion", "bdlf", "fusion2")]
    for args in tables:
        arms = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--arm")
        for name, pattern in arms.items():
            folder, glob = os.path.split(pattern)
            assert folder == str(runs)
            matched = sorted(n for n in names if fnmatch.fnmatch(n, glob))
            assert len(matched) == 2 and len({n.rsplit("_", 1)[0] for n in matched}) == 1, name
