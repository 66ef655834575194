"""Shared test setup: everything offline, temporary homes, small helpers."""
import os
import tempfile

# Set before any library import: no hub downloads, no update checks.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # One OpenMP thread per process: `make test` runs a pytest worker per core, and two threads in each (torch's
    # default on 2 cores) wait on each other's barriers. The commands the tests start inherit it.
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(key, value)
# What LAIT keeps between processes (the language filter's word table): one folder for the suite's processes, the
# xdist workers and the commands they start, and not the user's own cache.
os.environ.setdefault("LAIT_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"lait-test-cache-{os.getuid()}"))

from tests.objectstore import object_store  # noqa: E402,F401  (the laitobj:// stand-in for gs://, for every test)
from tests.relevance.shared_model import model_dir, train_rows  # noqa: E402,F401  (the default relevance model)
from tests.procs import sleeper  # noqa: E402,F401  (a live process: the run a marker names)


def _remember_dofn_specs() -> None:
    """Beam's ``userstate.get_dofn_specs`` once per DoFn instance, not each of the ~8 times Beam asks while it builds
    and runs a pipeline: it inspects the signature of every method of the DoFn each time, over a second of a
    2-core machine's time per filter pipeline, and the suite builds hundreds. The answer is a function of the
    instance, whose methods do not change once it exists: the pipelines run as they do without this."""
    import weakref

    from apache_beam.transforms import userstate

    specs_of = userstate.get_dofn_specs
    known = weakref.WeakKeyDictionary()

    def remembered(dofn):
        try:
            state, timers = known[dofn]
        except (KeyError, TypeError):  # not asked yet, or not weakly referable (not kept)
            state, timers = specs_of(dofn)
            try:
                known[dofn] = (frozenset(state), frozenset(timers))
            except TypeError:
                pass
        return set(state), set(timers)

    userstate.get_dofn_specs = remembered


_remember_dofn_specs()
