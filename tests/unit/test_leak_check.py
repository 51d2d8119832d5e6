"""The session's leak check (tests/conftest.py) fails the test that leaves an engine process behind."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

LEAKY_TEST = '''
import os, subprocess, sys

def test_leaves_an_orphaned_engine_behind():
    from service.engines.lifeline import engine_processes
    import time
    before = {p.pid for p in engine_processes()}
    # What a killed owner leaves: a process titled as vLLM titles its EngineCore, reparented to init.
    subprocess.run([sys.executable, "-c",
                    "import os, sys, time, setproctitle\\n"
                    "if os.fork(): sys.exit(0)\\n"
                    "setproctitle.setproctitle(os.environ['VLLM_PROCESS_NAME_PREFIX'] + '::EngineCore')\\n"
                    "time.sleep(120)"], check=True)
    deadline = time.monotonic() + 10
    while not [p for p in engine_processes() if p.pid not in before] and time.monotonic() < deadline:
        time.sleep(0.05)  # until the orphan has its title

def test_clean():
    assert True
'''


@pytest.mark.slow
def test_leak_check_fails_the_leaking_test_and_kills_the_stray(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_leaky=LEAKY_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, errors=1)  # the leak fails at the leaking test's teardown, not later
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaves_an_orphaned_engine_behind*",
                                 "*engine processes outlived their owner*::EngineCore*killed now*"])
    # and the check killed the stray: no fake EngineCore of that inner session is left
    from service.engines.lifeline import engine_processes

    inner_prefix = result.stdout.str()  # the inner session's title prefix is VLLM-test<its pid>
    assert not [p for p in engine_processes() if p.title.endswith("::EngineCore") and p.ppid == 1
                and p.title.split("::")[0] in inner_prefix]
