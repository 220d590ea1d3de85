"""Start-up: the launcher imports nothing it does not use (measured with python -X importtime; docs/performance.md)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, read_output

from beam_pipeline.imports import modules_hidden

# Imported by `import apache_beam`, `import openvino` or pyarrow's first conversion of Python values whenever they are
# installed (all are, in the test environment), and used by nothing a local run does.
UNUSED = ("pandas", "google.cloud.bigquery", "google.cloud.pubsub", "openvino.tools.ovc", "tensorflow", "keras")


def test_a_hidden_module_fails_to_import_until_the_block_ends():
    name = "wave"  # a stdlib module nothing here imports
    sys.modules.pop(name, None)
    with modules_hidden([name, "json"]):
        with pytest.raises(ModuleNotFoundError, match=name):
            importlib.import_module(name)
        assert importlib.import_module("json") is json, "a module imported already is left as it is"
    assert importlib.import_module(name).__name__ == name


@pytest.mark.slow  # the whole default job in a new process
def test_the_default_job_imports_none_of_the_unused_packages(default_job_facts):
    modules = set(default_job_facts["modules"])
    assert {"apache_beam", "openvino", "pyarrow"} <= modules
    loaded = sorted(m for m in modules if m in UNUSED or m.startswith(tuple(f"{u}." for u in UNUSED)))
    assert loaded == [], loaded


@pytest.mark.slow  # the whole default job in a new process
def test_the_default_job_makes_no_full_garbage_collection_and_leaves_the_collector_as_it_was(default_job_facts):
    facts = default_job_facts
    # Before the launcher turned the collector off during start-up, it made 3 full passes over its ~200,000 objects.
    assert facts["full_collections"] == 0
    assert facts["gc_enabled_after"] and facts["frozen_after"] == 0, facts


def test_the_command_ends_with_its_objects_frozen_and_returns_mains_exit_code():
    """`command()` (the installed script, `python -m beam_pipeline`) freezes what the process made before the
    interpreter's final collections; a bad flag still returns 2."""
    code = "import gc, sys\nfrom beam_pipeline.launch.cli import command\nprint(command(), gc.get_freeze_count() > 0)\n"
    result = subprocess.run(
        [sys.executable, "-c", code, "--input", "x", "--output", "y", "--no-such-flag"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["2", "True"], result.stdout + result.stderr[-2000:]
    assert "--no-such-flag" in result.stderr


@pytest.fixture(scope="module")
def default_job_facts(tmp_path_factory, float_model, labels_file, shared) -> dict:
    """The default job on the 5 photos in a new process, once for this module's tests: the modules it imported, the
    full garbage collections it made, and the collector's state once `main` returned. Checks that every row is
    labelled."""
    tmp_path = tmp_path_factory.mktemp("default-job")
    prefix = tmp_path / "out" / "labels"
    code = (
        "import gc, json, sys\n"
        "full = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'stop' and info['generation'] == 2 and full.append(1))\n"
        "from beam_pipeline.launch.cli import main\n"
        "code = main(sys.argv[2:])\n"
        "facts = {'modules': sorted(sys.modules), 'full_collections': len(full)}\n"
        "facts |= {'gc_enabled_after': gc.isenabled(), 'frozen_after': gc.get_freeze_count()}\n"
        "json.dump(facts, open(sys.argv[1], 'w'))\n"
        "sys.exit(code)\n"
    )
    facts_file = tmp_path / "facts.json"
    args = ["--input", shared / "images" / "photos", "--output", prefix, "--model", float_model]
    args += ["--labels", labels_file]
    result = subprocess.run(
        [sys.executable, "-c", code, facts_file, *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r["status"] for r in read_output(prefix).to_pylist()} == {"ok"}
    return json.loads(facts_file.read_text())
