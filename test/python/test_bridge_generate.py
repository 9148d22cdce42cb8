"""`python -m synapse_python.bridge generate`: files, determinism, --check and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from bridge_support import FIXTURE, FIXTURE_STEM, cli
from synapse_python.bridge import generate

FIXTURE_FILES = sorted(
    [
        f"{FIXTURE_STEM}.desc",
        f"{FIXTURE_STEM}.ir.json",
        f"{FIXTURE_STEM}.proto",
        f"synapse_bridge_{FIXTURE_STEM}.py",
    ]
)


def contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_generate_writes_the_files(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = cli("generate", "--module", FIXTURE, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == FIXTURE_FILES
    assert result.stdout.splitlines() == [str(out / name) for name in FIXTURE_FILES]
    ir = json.loads((out / f"{FIXTURE_STEM}.ir.json").read_text())
    assert ir["service"] == "BridgeTypes" and ir["version"] == 2
    text = (out / f"{FIXTURE_STEM}.ir.json").read_text()
    assert text == json.dumps(ir, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    server = (out / f"synapse_bridge_{FIXTURE_STEM}.py").read_text()
    assert "from synapse_fixtures import bridge_types\n" in server
    assert '"describe": bridge_types.describe,' in server


def test_output_is_deterministic_across_runs_and_hash_seeds(tmp_path: Path) -> None:
    runs = []
    for seed in ("0", "1", "12345"):
        out = tmp_path / f"gen-{seed}"
        result = cli("generate", "--module", FIXTURE, "--out", str(out), PYTHONHASHSEED=seed)
        assert result.returncode == 0, result.stderr
        runs.append(contents(out))
    assert runs[0] == runs[1] == runs[2]
    assert runs[0] == generate(FIXTURE).files  # in-process too
    assert b"/tmp" not in b"".join(runs[0].values())  # no absolute paths


def test_check(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert cli("generate", "--module", FIXTURE, "--out", str(out)).returncode == 0

    fresh = cli("generate", "--module", FIXTURE, "--out", str(out), "--check")
    assert (fresh.returncode, fresh.stdout, fresh.stderr) == (0, "", "")

    proto = out / f"{FIXTURE_STEM}.proto"
    proto.write_text(proto.read_text().replace("rpc Describe(", "rpc DescribeOld("))
    (out / f"{FIXTURE_STEM}.desc").unlink()
    stale = cli("generate", "--module", FIXTURE, "--out", str(out), "--check")
    assert stale.returncode == 1
    assert stale.stdout == ""
    assert f"{proto} (differs)" in stale.stderr
    assert f"{out / f'{FIXTURE_STEM}.desc'} (missing)" in stale.stderr
    assert f"python -m synapse_python.bridge generate --module {FIXTURE}" in stale.stderr
    assert not (out / f"{FIXTURE_STEM}.desc").exists()  # --check writes nothing


def test_options_are_part_of_the_output(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    args = ["--module", FIXTURE, "--function", "people", "--function", "describe"]
    assert cli("generate", *args, "--out", str(out)).returncode == 0
    proto = (out / f"{FIXTURE_STEM}.proto").read_text()
    assert "rpc Describe(" in proto and "rpc People(" in proto and "rpc Scalars(" not in proto
    assert "--module synapse_fixtures.bridge_types --function people --function describe" in proto
    # The same options check clean; other options are stale.
    check = cli("generate", *args, "--out", str(out), "--check")
    assert check.returncode == 0, check.stderr
    assert cli("generate", "--module", FIXTURE, "--out", str(out), "--check").returncode == 1


def test_unsupported_type_exits_2_naming_function_parameter_and_type(tmp_path: Path) -> None:
    result = cli(
        "generate", "--module", "synapse_fixtures.bridge_unsupported", "--out", str(tmp_path)
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: synapse_fixtures.bridge_unsupported.count_distinct: parameter 'values' has "
        "unsupported type set[int]: sets have no protobuf form; use list[int]\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    unknown = cli("generate", "--module", FIXTURE, "--function", "nope", "--out", str(tmp_path))
    assert unknown.returncode == 2
    assert "module synapse_fixtures.bridge_types has no function named 'nope'" in unknown.stderr

    missing = cli("generate", "--module", "no_such_module", "--out", str(tmp_path))
    assert missing.returncode == 2
    assert "cannot import module 'no_such_module'" in missing.stderr
    assert "ModuleNotFoundError" in missing.stderr

    broken = cli("generate", "--module", "synapse_fixtures.broken_import", "--out", str(tmp_path))
    assert broken.returncode == 2
    assert "RuntimeError: boom at import" in broken.stderr

    no_out = cli("generate", "--module", FIXTURE)
    assert no_out.returncode == 2
    assert "--out" in no_out.stderr
