"""Every example's command line against a table of bad flags and files (issue 10, item 2):
each ends with exit status 2 and one ``error:`` line naming the problem, no traceback, and
nothing on disk changed (no file written, removed or modified, no folder left behind)."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ..scripts import load_script, tiny_nas

ROOT = Path(__file__).resolve().parents[2]
TINY = tiny_nas(synthetic_size=32)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: a folder, or a file's bytes, mode and mtime."""
    out: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            out[key] = ("special",)
        elif path.is_dir():
            out[key] = ("dir",)
        else:
            out[key] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mode,
                path.stat().st_mtime_ns,
            )
    return out


def previous_run(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp / "out" / "checkpoint.pt").write_bytes(b"a previous run's checkpoint")


def checkpoint_is(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "out").mkdir()
        make(tmp / "out" / "checkpoint.pt")

    return setup


def config(text: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / "bad.toml").write_bytes(text)


def nothing(tmp: Path) -> None:
    pass


# (id, script, argv, setup, what the error line must contain)
CASES: list[tuple[str, str, list[str], Callable[[Path], None], str]] = [
    ("resume-nothing", "lease_cifar", [*TINY, "--resume"], nothing, "checkpoint.pt does not exist"),
    (
        "evaluate-resume-nothing",
        "darts_cifar",
        ["evaluate", *TINY, "--resume"],
        nothing,
        "checkpoint.pt does not exist",
    ),
    (
        "resume-folder",
        "lease_cifar",
        [*TINY, "--resume"],
        checkpoint_is(lambda p: p.mkdir()),
        "checkpoint.pt is not a file",
    ),
    (
        "resume-fifo",
        "darts_cifar",
        [*TINY, "--resume"],
        checkpoint_is(os.mkfifo),
        "checkpoint.pt is not a file",
    ),
    (
        "resume-random-bytes",
        "lease_cifar",
        [*TINY, "--resume"],
        checkpoint_is(lambda p: p.write_bytes(bytes(range(256)) * 4)),
        "cannot be read",
    ),
    (
        "resume-not-mlo",
        "lease_cifar",
        [*TINY, "--resume"],
        checkpoint_is(lambda p: torch.save({"model": torch.zeros(2)}, p)),
        "is not an mlo checkpoint",
    ),
    ("previous-run", "lease_cifar", TINY, previous_run, "holds a previous run"),
    (
        "resume-and-overwrite",
        "lease_cifar",
        [*TINY, "--resume", "--overwrite"],
        checkpoint_is(lambda p: p.write_bytes(b"x")),
        "contradict each other",
    ),
    (
        "out-is-a-file",
        "lease_cifar",
        TINY,
        lambda tmp: (tmp / "out").write_text("a file"),
        "is a file; give a folder",
    ),
    (
        "config-lease-3",
        "lease_cifar",
        [*TINY, "--config", "{tmp}/bad.toml"],
        config(b"lease = 3\n"),
        "lease",
    ),
    (
        "config-not-utf8",
        "lease_cifar",
        ["--config", "{tmp}/bad.toml"],
        config(b"seed = 1\n# \xff\xfe\n"),
        "is not UTF-8 text",
    ),
    (
        "config-folder",
        "darts_cifar",
        ["--config", "{tmp}"],
        nothing,
        "is a folder; give a .toml file",
    ),
    (
        "config-deeply-nested",
        "lease_cifar",
        ["--config", "{tmp}/bad.toml"],
        config(b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
        "nests too deeply",
    ),
    ("config-dev-zero", "lease_cifar", ["--config", "/dev/zero"], nothing, "larger than 1 MiB"),
    ("config-missing", "maml", ["--config", "{tmp}/none.toml"], nothing, "does not exist"),
    ("device-gpu0", "lease_cifar", [*TINY, "--device", "gpu0"], nothing, "'gpu0' is not a device"),
    ("device-mps", "darts_cifar", [*TINY, "--device", "mps"], nothing, "'mps'"),
    ("device-cuda-7", "lease_cifar", [*TINY, "--device", "cuda:7"], nothing, "not on this machine"),
    ("cifar-image-size-9", "lease_cifar", ["--image-size", "9"], nothing, "images are 32×32"),
    ("cifar-image-size-8", "darts_cifar", ["--image-size", "8"], nothing, "images are 32×32"),
    ("huge-seed", "lease_cifar", [*TINY, "--seed", "9" * 30], nothing, "seed"),
    ("negative-seed", "darts_cifar", [*TINY, "--seed", "-1"], nothing, "seed"),
    ("threads-0", "lease_cifar", [*TINY, "--threads", "0"], nothing, "--threads 0"),
    (
        "partial-channels",
        "lease_cifar",
        [*TINY, "--partial-channels", "3", "--out", "{tmp}/fresh"],
        nothing,
        "must divide",
    ),
    (
        "genotype-missing",
        "darts_cifar",
        ["evaluate", *TINY, "--genotype", "{tmp}/none.json"],
        nothing,
        "neither a file nor a known name",
    ),
    (
        "genotype-invalid",
        "darts_cifar",
        ["evaluate", *TINY, "--genotype", "{tmp}/bad.toml"],
        config(b'{"normal": 3}'),
        "is not a valid genotype",
    ),
    ("study-bad-method", "lease_study", ["--methods", "bogus"], nothing, "bogus"),
    ("out-empty", "lease_cifar", [*TINY, "--out", ""], nothing, "out: is empty"),
    (
        "override-without-resume",
        "lease_cifar",
        [*TINY, "--override", "seed"],
        nothing,
        "--override",
    ),
    (
        "author-setting-with-explanation",
        "lease_cifar",
        [*TINY, "--author-setting", "--explanation", "pgd"],
        nothing,
        "--author-setting",
    ),
    (
        "boolean-epochs-in-toml",
        "darts_cifar",
        [*TINY, "--config", "{tmp}/bad.toml"],
        config(b"epochs = true\n"),
        "epochs is True, a boolean",
    ),
    ("study-duplicate-methods", "lease_study", ["--methods", "random,random"], nothing, "random"),
    ("small-example-steps", "hyperparameter_optimization", ["--steps", "-1"], nothing, "steps"),
    (
        "small-example-config-folder",
        "data_reweighting",
        ["--config", "{tmp}"],
        nothing,
        "is a folder",
    ),
]


@pytest.mark.parametrize(
    "script, argv, setup, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_bad_input_is_one_error_line_and_changes_nothing(
    script, argv, setup, expected, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) land here, if anywhere
    setup(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if script != "lease_study" and not any(a == "--out" for a in argv):
        argv += ["--out", str(tmp_path / "out")]
    before = snapshot(tmp_path)
    example = load_script(ROOT / "examples" / f"{script}.py")
    with pytest.raises(SystemExit) as exit_:
        example.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_a_read_only_out_is_one_error_line(tmp_path, capsys, monkeypatch):
    """``os.access`` is what decides (root ignores permission bits, so it is simulated)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if "ro" in str(p) else real(p, mode))
    (tmp_path / "ro").mkdir()
    example = load_script(ROOT / "examples" / "lease_cifar.py")
    with pytest.raises(SystemExit) as exit_:
        example.main([*TINY, "--out", str(tmp_path / "ro" / "run")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "is not writable" in err and err.count("\n") == 1
    assert list((tmp_path / "ro").iterdir()) == []


@pytest.fixture(scope="module")
def finished_lease_run(tmp_path_factory) -> Path:
    """The output folder of one tiny LeaSE run, which the full-disk tests copy."""
    out = tmp_path_factory.mktemp("lease") / "out"
    assert load_script(ROOT / "examples" / "lease_cifar.py").main([*TINY, "--out", str(out)]) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "out"))


def test_a_full_disk_is_one_error_line_and_the_last_checkpoint_survives(
    tmp_path, capsys, monkeypatch, finished_lease_run
):
    example = load_script(ROOT / "examples" / "lease_cifar.py")
    out = copy_of(finished_lease_run, tmp_path)
    good = (out / "checkpoint.pt").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        example.main([*TINY, "--out", str(out), "--resume", "--max-steps", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: cannot write or read: No space left on device" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").read_bytes() == good
    assert not list(out.glob(".*.tmp"))


def test_a_full_disk_inside_torch_save_is_one_error_line(
    tmp_path, capsys, monkeypatch, finished_lease_run
):
    """torch.save's writer reports ENOSPC as a RuntimeError about stream positions."""
    import shutil

    example = load_script(ROOT / "examples" / "lease_cifar.py")
    out = copy_of(finished_lease_run, tmp_path)
    good = (out / "checkpoint.pt").read_bytes()

    def full(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4246"
        )

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        example.main([*TINY, "--out", str(out), "--resume", "--max-steps", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "0 MiB free" in lines[0]
    assert "Traceback" not in err
    assert (out / "checkpoint.pt").read_bytes() == good
    assert not list(out.glob(".checkpoint.pt.*"))  # no partial file left


def test_a_folder_a_run_left_before_its_first_checkpoint_is_not_a_run(tmp_path, capsys):
    """A run killed or failed before its first checkpoint leaves outputs but nothing to
    resume: a new run starts there (its leftovers removed), and --resume says so."""
    example = load_script(ROOT / "examples" / "lease_cifar.py")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "stale": true}\n')
    (out / "genotype.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        example.main([*TINY, "--out", str(out), "--resume"])
    assert exit_.value.code == 2
    assert "checkpoint.pt does not exist; start without --resume" in capsys.readouterr().err
    assert example.main([*TINY, "--out", str(out)]) == 0
    assert "stale" not in (out / "metrics.jsonl").read_text()
    assert (out / "checkpoint.pt").is_file() and (out / "genotype.json").read_text() != "{}"


def test_a_run_into_another_examples_folder_is_refused_and_changes_nothing(tmp_path, capsys):
    """A small example's run folder (its checkpoints/ and metrics file) given to the LeaSE
    search as --out: refused, naming the foreign files, before anything is written."""
    hpo = load_script(ROOT / "examples" / "hyperparameter_optimization.py")
    other = tmp_path / "hpo"
    hpo.main(["--steps", "2", "--seeds", "1", "--out", str(other), "--no-progress"])
    before = snapshot(tmp_path)
    example = load_script(ROOT / "examples" / "lease_cifar.py")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        example.main([*TINY, "--out", str(other)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "holds files that no run of this example writes" in lines[0]
    assert "checkpoints" in lines[0]
    assert snapshot(tmp_path) == before


def test_an_allocation_refused_while_building_the_model_is_one_out_of_memory_line(
    tmp_path, capsys, monkeypatch
):
    """--init-channels 100000 asks for a 40 GB weight while the supernet is built (the
    refusal is simulated here: the real one would need the memory to fail)."""
    import problems.nas.runner

    def refused(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
            "memory: you tried to allocate 40000000000 bytes."
        )

    monkeypatch.setattr(problems.nas.runner, "Supernet", refused)
    example = load_script(ROOT / "examples" / "darts_cifar.py")
    with pytest.raises(SystemExit) as exit_:
        example.main([*TINY, "--out", str(tmp_path / "out"), "--init-channels", "100000"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: out of memory")
    assert "40000000000 bytes" in lines[0] and "--init-channels" in lines[0]
    assert "Traceback" not in err


def test_a_supernet_too_large_for_the_machine_is_refused_before_it_is_allocated(tmp_path, capsys):
    """--init-channels 100000: built on the meta device first, its parameters alone
    exceed any CPU's memory; one line, nothing written."""
    example = load_script(ROOT / "examples" / "darts_cifar.py")
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        example.main([*TINY, "--out", str(tmp_path / "out"), "--init-channels", "100000"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the supernet would need at least" in lines[0], err
    assert "GiB is available" in lines[0] and "--init-channels" in lines[0]
    assert snapshot(tmp_path) == before


def test_an_evaluation_network_too_large_for_the_machine_is_refused_before_it_is_allocated(
    tmp_path, capsys
):
    example = load_script(ROOT / "examples" / "darts_cifar.py")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        example.main(
            ["evaluate", *TINY, "--out", str(out), "--init-channels", "100000", "--epochs", "1"]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the evaluation network would need at least" in lines[0], err
    assert not out.exists()
