"""`lait ARGS` run in the test process, with the result a `python -m lait ARGS` subprocess would give: for tests
whose command is not signalled, so that they save a Python start and LAIT's imports (seconds each on a busy
2-core machine)."""
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile


@contextlib.contextmanager
def _output_to_files():
    """This process's stdout and stderr, and those of the processes it starts, written to two temporary files
    (file descriptors 1 and 2 as well as ``sys.stdout``/``sys.stderr``, as a child's ``capture_output`` would take
    them): yields the two, read back by ``_read_back`` once the block has ended."""
    sys.stdout.flush()
    sys.stderr.flush()
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    saved_fds = [os.dup(1), os.dup(2)]
    saved_streams = sys.stdout, sys.stderr
    try:
        for fd, file in zip((1, 2), files):
            os.dup2(file.fileno(), fd)
        sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                                   errors="replace", write_through=True) for fd in (1, 2))
        yield files
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)


def _read_back(file) -> str:
    file.seek(0)
    text = file.read().decode("utf-8", errors="replace")
    file.close()
    return text


def lait_here(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`lait ARGS` as `python -m lait ARGS` runs it (``cli.main``), in this process: what a crawl runs in its own
    processes (the Scrapy crawl, once per process for its reactor) still does, and the test saves a Python start
    and LAIT's imports (a second or more of a loaded machine's time per call). The result is the subprocess's:
    exit status, stdout and stderr (the crawl processes' too, and LAIT's warnings as ``cli.main`` logs them); an
    exception ``cli.main`` does not handle is raised here, where a subprocess would print its traceback."""
    from lait import cli

    root = logging.getLogger()
    with _output_to_files() as (out, err):
        # what cli.main's logging.basicConfig does in a process of its own (here the root logger has pytest's)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
        try:
            code = cli.main(list(args))
        except SystemExit as exc:  # argparse's errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        finally:
            root.removeHandler(handler)
    result = subprocess.CompletedProcess(["lait", *args], code, _read_back(out), _read_back(err))
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def lait_crawl_here(*args: str, settings: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`lait crawl ARGS --no-progress` run by ``lait_here``: the result of a `python -m lait crawl` subprocess,
    without its Python start. A crawl of start URLs still runs Scrapy in child processes (``crawler.runner`` starts
    one per crawl, for Twisted's reactor), so this process never starts a reactor and one crawl leaves nothing for
    the next; ``--warc`` runs its reader here, as in `lait crawl`'s own process. ``settings``: each given as
    ``-s KEY=JSON``."""
    command = ["crawl", *args, "--no-progress"]
    for key, value in (settings or {}).items():
        command += ["-s", f"{key}={json.dumps(value)}"]
    return lait_here(*command, check=check)
